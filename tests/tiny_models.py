"""Tiny models for the strategies tests: built locally from configs (no hub, no downloads), 2-3 layers, hidden 32.

Each builder seeds torch so a test that builds the same model twice gets the same weights.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()  # "Some weights were not initialized" etc. are noise for random tiny models

HIDDEN = 32
VOCAB = 100
_COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "max_position_embeddings": 64,
    "num_labels": 3,
}


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def bert(num_layers: int = 2) -> nn.Module:
    _seeded()
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(**{**_COMMON, "num_hidden_layers": num_layers})
    )


def bare_bert(num_layers: int = 2) -> nn.Module:
    """A ``BertModel`` without a task head: the known layout's ``bert.`` prefix is absent."""
    _seeded()
    return transformers.BertModel(transformers.BertConfig(**{**_COMMON, "num_hidden_layers": num_layers}))


def roberta() -> nn.Module:
    _seeded()
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**_COMMON, pad_token_id=1))


def xlm_roberta() -> nn.Module:
    _seeded()
    return transformers.XLMRobertaForSequenceClassification(transformers.XLMRobertaConfig(**_COMMON, pad_token_id=1))


def distilbert() -> nn.Module:
    _seeded()
    config = transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64, num_labels=3
    )
    return transformers.DistilBertForSequenceClassification(config)


def albert(num_hidden_layers: int = 2, num_hidden_groups: int = 1) -> nn.Module:
    _seeded()
    config = transformers.AlbertConfig(
        **{**_COMMON, "num_hidden_layers": num_hidden_layers}, embedding_size=16, num_hidden_groups=num_hidden_groups
    )
    return transformers.AlbertForSequenceClassification(config)


def electra() -> nn.Module:
    """embedding_size != hidden_size, so the model has ``electra.embeddings_project``."""
    _seeded()
    return transformers.ElectraForSequenceClassification(transformers.ElectraConfig(**_COMMON, embedding_size=16))


def deberta_v2(conv_kernel_size: int = 0, relative_attention: bool = True) -> nn.Module:
    _seeded()
    config = transformers.DebertaV2Config(
        **_COMMON,
        relative_attention=relative_attention,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        conv_kernel_size=conv_kernel_size,
    )
    return transformers.DebertaV2ForSequenceClassification(config)


def modernbert() -> nn.Module:
    _seeded()
    config = transformers.ModernBertConfig(
        **{**_COMMON, "num_hidden_layers": 3},
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    return transformers.ModernBertForSequenceClassification(config)


def gpt2() -> nn.Module:
    _seeded()
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=64, num_labels=3, pad_token_id=0
    )
    return transformers.GPT2ForSequenceClassification(config)


def llama() -> nn.Module:
    _seeded()
    config = transformers.LlamaConfig(**_COMMON, num_key_value_heads=1, pad_token_id=0)
    return transformers.LlamaForSequenceClassification(config)


def token_batch(batch: int = 4, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random input_ids (no padding) and labels for the classifiers above."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(3, VOCAB, (batch, length), generator=gen),
        "labels": torch.randint(0, 3, (batch,), generator=gen),
    }


class SeedClassifier(nn.Module):
    """The seed project's model: a ``BertModel`` body as ``self.bert`` and an ``nn.Sequential`` head whose children
    are named ``0``..``3``. With 12 layers, ``layer.1`` is a string prefix of ``layer.10`` and ``layer.11``."""

    def __init__(self, num_layers: int = 12, num_labels: int = 3) -> None:
        super().__init__()
        _seeded()
        self.bert = transformers.BertModel(transformers.BertConfig(**{**_COMMON, "num_hidden_layers": num_layers}))
        self.head = nn.Sequential(nn.Linear(HIDDEN, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, num_labels))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids).last_hidden_state
        return self.head(hidden[:, 0])


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``, same attribute names."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    """A ResNet-18-shaped CNN (two BasicBlocks per stage) with torchvision's attribute names and tiny widths, so the
    CNN path is tested even where torchvision cannot be imported."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        _seeded()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [width, width * 2, width * 4, width * 8]
        inplanes = width
        for i, planes in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            self.add_module(
                f"layer{i}", nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes))
            )
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MLPStack(nn.Module):
    """``num_layers`` Linear blocks in an ``nn.ModuleList`` (leaf blocks: the structural fallback skips them, so the
    tests declare ``LayerSpec(layers="blocks")``)."""

    def __init__(self, num_layers: int = 5, width: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        _seeded()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.out(x)


class TwoTower(nn.Module):
    """Two input towers and a shared head: task ``a`` reads tower ``a``, task ``b`` tower ``b``."""

    def __init__(self, width: int = 8, num_classes: int = 2) -> None:
        super().__init__()
        _seeded()
        self.tower_a = nn.Sequential(nn.Linear(4, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, width))
        self.tower_b = nn.Sequential(nn.Linear(6, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        tower = self.tower_a if task == "a" else self.tower_b
        return self.head(torch.relu(tower(x)))


class DropoutBlock(nn.Module):
    def __init__(self, width: int, p: float) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.linear(x)))


class DropoutNet(nn.Module):
    """Blocks with heavy dropout (p=0.9): a frozen block in train mode would make every forward pass different."""

    def __init__(self, num_layers: int = 3, width: int = 16, p: float = 0.9) -> None:
        super().__init__()
        _seeded()
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList(DropoutBlock(width, p) for _ in range(num_layers))
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks[:upto]:
            x = block(x)
        return self.head(x) if upto is None else x
