"""Bridges from training frameworks into expman, one leaf module per framework.

Each module imports its framework inside itself, so ``import expman`` (and
``import expman.integrations``) never loads one: ``lightning`` (ExpmanLogger),
``transformers`` (ExpmanCallback), ``keras`` (ExpmanCallback), ``tensorboard``
(``patch()``: existing SummaryWriter code also logs into expman). docs/integrations.md.
"""
