"""Named search spaces for the sweep: ``tune_main.py --space NAME``.

Contract of a space: a module-level define-by-run function ``space(trial: optuna.Trial) -> dict``
registered with ``@register_space(name)``. It samples with ``trial.suggest_*`` under dotted config
keys (``"loss.weight"``) or under ``"space.*"`` for structural helpers the trainable ignores
(``"space.depth"``), and returns the config values it derives (``{"model.blocks": "conv,attn"}``).
Sample a parameter only where it exists (a block's kind only for blocks that exist, a margin only for
the loss forms that have one). A space may not set ``train.seed``, ``train.epochs`` or any ``data.*`` /
``backbone.*`` key other than the extractor's (``ssnf.tune.overrides.EXTRACTOR_KEYS``: backbone name,
strides, image size; each setting's features are prepared once and shared): the data and the budget
(``--max-epochs``) are the experiment's. An optional ``space.baseline`` (the default config's point) is the
sweep's trial 0.

Adding a space: write a module here with a decorated function and import it at the bottom of this
file; ``tests/test_spaces.py`` runs every registered space.
"""

from __future__ import annotations

from typing import Any, Callable

from ssnf.registry import Registry

Space = Callable[[Any], dict]
SPACES: Registry[Space] = Registry("search space")
register_space = SPACES.register


from search_spaces import cost, paper, robust, smoke  # noqa: E402,F401  (registration)
