"""Fine-tune a POSITIVE/NEGATIVE head on the bundled MiniLM encoder, deterministically."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from llm_router.workers.bundled.sentiment_data import NEGATIVE, POSITIVE

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
EPOCHS = 8
BATCH = 16
LEARNING_RATE = 5e-5
SEED = 20240613


def train_sentiment(encoder: Path, target: Path) -> None:
    random.seed(SEED)
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(encoder))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(encoder),
        num_labels=2,
        id2label=LABELS,
        label2id={label: index for index, label in LABELS.items()},
    )
    examples = [(text, 1) for text in POSITIVE] + [(text, 0) for text in NEGATIVE]
    optimiser = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    order = random.Random(SEED)
    model.train()
    for _ in range(EPOCHS):
        order.shuffle(examples)
        for start in range(0, len(examples), BATCH):
            chunk = examples[start : start + BATCH]
            batch = tokenizer([text for text, _ in chunk], padding=True, truncation=True, return_tensors="pt")
            labels = torch.tensor([label for _, label in chunk])
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()
    model.eval()
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
