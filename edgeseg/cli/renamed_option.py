"""Options renamed so that one idea has one spelling across commands; the old name still works."""

from __future__ import annotations

import click


class RenamedOption(click.Option):
    """A click option that still accepts its earlier names (``old``) on the command line but
    leaves them out of ``--help`` and of error messages: scripts written for an old spelling keep
    working, while the help of every command shows one spelling per idea (``--model-name`` for a
    served model's name, ``--duration`` for seconds of measurement, ``--overwrite`` for replacing
    an output)."""

    def __init__(self, *args, old: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        unknown = [name for name in old if name not in self.opts]
        if unknown:  # a typing error here would silently show the old name
            raise ValueError(f"old names {unknown} are not names of the option {self.opts}")
        self.old_names = tuple(old)

    @property
    def current_opts(self) -> list[str]:
        """The names the help shows."""
        return [name for name in self.opts if name not in self.old_names]

    def get_help_record(self, ctx: click.Context):
        every = self.opts
        self.opts = self.current_opts
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every

    def get_error_hint(self, ctx: click.Context) -> str:
        return " / ".join(f"'{name}'" for name in self.current_opts)


def overwrite_option(help_text: str):
    """``--overwrite`` (earlier ``--force``), a flag replacing an existing output."""
    return click.option("--overwrite", "--force", "overwrite", cls=RenamedOption, old=("--force",), is_flag=True,
                        help=help_text)
