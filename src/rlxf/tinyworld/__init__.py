"""Tinyworld: a small synthetic assistant world where every RLHF stage runs for real.

Twenty creatures, each with a color, a home and a food (a fixed table, the same for
every seed), small additions in number words and greetings make up the world. Prompts
ask seven tasks (color, home, food, describe, add, list, greet) in three kinds
(instruction, few-shot, continuation). A known **gold oracle** scores any answer on
helpful, honest, harmless and fluent, standing in for the people whose preferences
RLHF learns; **simulated labellers** with personas choose between answers by
Bradley-Terry on noisy, persona-weighted gold scores. The **corpus** module writes the
unaligned pretraining text (good, wrong, rude and rambling answers), the SFT
demonstrations and the prompt sets, all reproducible from a seed.

Pure Python (stdlib only), so importing it is cheap.
"""

from .corpus import (ANSWER_MIX, answer_pairs, candidate_answers, demonstrations,
                     pretraining_corpus, pretraining_heldout, write_dataset)
from .labellers import PERSONAS, Labeller, agreement_report, default_panel
from .oracle import GoldScore, score
from .prompts import KINDS, TASKS, TaskPrompt, parse_prompt, sample_prompts
from .world import FACTS, Creature

__all__ = [
    "ANSWER_MIX", "FACTS", "KINDS", "PERSONAS", "TASKS", "Creature", "GoldScore", "Labeller",
    "TaskPrompt", "agreement_report", "answer_pairs", "candidate_answers", "default_panel",
    "demonstrations", "parse_prompt", "pretraining_corpus", "pretraining_heldout",
    "sample_prompts", "score", "write_dataset",
]
