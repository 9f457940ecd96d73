"""Latency measurement and reports."""
