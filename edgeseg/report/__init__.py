"""Report output shared by training, evaluation and export: tables, JSON and CSV files, PNG
figures and training curves, all written atomically. Nothing here imports torch."""
