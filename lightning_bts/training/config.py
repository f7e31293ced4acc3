"""A run's configuration as an object: what fit.py's arguments mean, parsed once, changed in code, checked, dumped.

:func:`~lightning_bts.training.train.train` takes the jsonargparse ``Namespace`` that LightningCLI builds from
layered YAML and flags. :func:`parse_config` builds one from fit.py-style arguments; a caller that changes a
setting changes the object (``config.data.fold = 2``, ``config.model.lr = 1e-3``), not a list of strings::

    config = parse_config(["--config", "configs/quick_cpu.yaml", "--trainer.max_epochs", "5"])
    config.data.fold = 2
    result = train(config)
    tuned = parse_config(["--model.lr", "0.01"], base=config)  # arguments on top of a config object

``train()`` checks the object again with the same parser, so a misspelt key set in code is an error naming it,
as it is on the command line.
"""

from __future__ import annotations

import sys
from argparse import ArgumentError
from collections.abc import Mapping, Sequence
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning.cli import LightningArgumentParser

from lightning_bts.training.cli import BTSCLI, config_error

Config = Namespace  # what parse_config returns and train() takes (a dict of the same shape works too)


class _ParserOnly(BTSCLI):
    """A :class:`BTSCLI` that builds fit.py's parser and nothing else, with no side effect on random state.

    LightningCLI has no parse-only mode: its ``__init__`` parses, seeds from the parsed ``seed_everything``, then
    calls the public hooks ``before_instantiate_classes`` and ``instantiate_classes``. Here ``parse_arguments``
    (public too) parses nothing and leaves ``seed_everything: False``, which LightningCLI documents as "avoid
    calling seed_everything", and the hooks build nothing. (pytorch_lightning 2.6 ``cli.py``: ``__init__``,
    ``_set_seed``.)
    """

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self.config = Namespace(seed_everything=False)

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def config_parser() -> LightningArgumentParser:
    """fit.py's parser (LightningCLI's, with the shortcuts, defaults and links of :class:`BTSCLI`).

    Errors raise ``argparse.ArgumentError`` instead of exiting; ``--help`` prints and exits as on the command line.
    """
    return _ParserOnly().parser


def parse_config(args: Sequence[str] | None = None, base: Config | None = None,
                 parser: LightningArgumentParser | None = None) -> Config:
    """The configuration fit.py's arguments describe (``None``: ``sys.argv[1:]``), layered and validated.

    With ``base`` (a config, e.g. one changed in code) the arguments apply on top of it instead of the defaults,
    as later arguments win over earlier ones on the command line.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, named in the message.
    """
    parser = parser or config_parser()
    args = sys.argv[1:] if args is None else [str(arg) for arg in args]
    try:
        return parser.parse_args(args, namespace=base.clone() if base is not None else None)
    except ArgumentError as error:
        raise config_error(error) from None


def check_config(config: Config | Mapping[str, Any], parser: LightningArgumentParser | None = None) -> Config:
    """``config`` validated as :func:`~lightning_bts.training.train.train` will validate it, defaults filled in.

    Raises:
        ConfigError: an unknown key or a value of the wrong type, named in the message.
    """
    parser = parser or config_parser()
    try:
        return parser.parse_object(config)
    except ArgumentError as error:
        raise config_error(error) from None


def dump_config(config: Config, parser: LightningArgumentParser | None = None) -> str:
    """``config`` as the YAML fit.py reads back with ``--config`` (what a run saves as config.yaml)."""
    parser = parser or config_parser()
    return parser.dump(check_config(config, parser))
