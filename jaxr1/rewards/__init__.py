"""Verifiable rewards: answer extraction, a sympy-based verifier, R1 reward functions, a scorer.

    from jaxr1.rewards import verify, extract_answer, RewardScorer
"""

from jaxr1.rewards.extract import extract_answer
from jaxr1.rewards.functions import (
    accuracy_reward,
    count_reward,
    format_reward,
    iou_reward,
    mcq_reward,
    overlong_reward,
)
from jaxr1.rewards.pool import WorkerPool
from jaxr1.rewards.registry import (
    REWARD_FUNCTIONS,
    RewardFunctionError,
    get_reward_function,
    parse_reward_specs,
    register,
    reward_specs,
)
from jaxr1.rewards.scorer import RewardResult, RewardScorer
from jaxr1.rewards.verify import check, verify

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardFunctionError",
    "RewardResult",
    "RewardScorer",
    "WorkerPool",
    "accuracy_reward",
    "check",
    "count_reward",
    "extract_answer",
    "format_reward",
    "get_reward_function",
    "iou_reward",
    "mcq_reward",
    "overlong_reward",
    "parse_reward_specs",
    "register",
    "reward_specs",
    "verify",
]
