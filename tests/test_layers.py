"""Layer discovery: every parameter in exactly one group, groups in depth order, module paths where they belong."""

from __future__ import annotations

import pytest
import tiny_models as tm
import torch
from torch import nn

from strategies import (
    EMBEDDINGS,
    HEAD,
    OTHER,
    LayerDiscoveryError,
    LayerMap,
    LayerSpec,
    StrategyConfigError,
    build_strategy,
    discover_layers,
)


def assert_partition(model: nn.Module, layer_map: LayerMap) -> None:
    """Every parameter in exactly one group; groups ordered embeddings, layer.0..L-1, head, other."""
    seen = [name for group in layer_map.groups for name, _ in group.params]
    assert sorted(seen) == sorted(name for name, _ in model.named_parameters())
    assert len(seen) == len(set(seen))
    expected = [f"layer.{i}" for i in range(layer_map.num_layers)]
    names = layer_map.names
    if EMBEDDINGS in names:
        expected.insert(0, EMBEDDINGS)
    expected.append(HEAD)
    if OTHER in names:
        expected.append(OTHER)
    assert names == expected
    assert layer_map.bottom_up() == [EMBEDDINGS, *expected[expected.index("layer.0") : expected.index(HEAD) + 1]]


def params_of(layer_map: LayerMap, group: str) -> list[str]:
    return [name for name, _ in layer_map.group(group).params]


def assert_block_params(layer_map: LayerMap, stack: str) -> None:
    """layer.i owns exactly the parameters under ``<stack>.<i>.`` (whole path components)."""
    for i in range(layer_map.num_layers):
        names = params_of(layer_map, f"layer.{i}")
        assert names, f"layer.{i} is empty"
        assert all(n.startswith(f"{stack}.{i}.") for n in names), names


# (builder, stack path, number of layers, group -> module paths)
HF_CASES = {
    "bert": (
        tm.bert,
        "bert.encoder.layer",
        2,
        {EMBEDDINGS: ["bert.embeddings"], HEAD: ["bert.pooler", "dropout", "classifier"]},
    ),
    "roberta": (tm.roberta, "roberta.encoder.layer", 2, {EMBEDDINGS: ["roberta.embeddings"], HEAD: ["classifier"]}),
    # XLMRobertaForSequenceClassification registers `classifier` before `roberta`: it must still be the head.
    "xlm-roberta": (
        tm.xlm_roberta,
        "roberta.encoder.layer",
        2,
        {EMBEDDINGS: ["roberta.embeddings"], HEAD: ["classifier"]},
    ),
    "distilbert": (
        tm.distilbert,
        "distilbert.transformer.layer",
        2,
        {EMBEDDINGS: ["distilbert.embeddings"], HEAD: ["pre_classifier", "classifier", "dropout"]},
    ),
    "electra": (
        tm.electra,
        "electra.encoder.layer",
        2,
        {EMBEDDINGS: ["electra.embeddings", "electra.embeddings_project"], HEAD: ["classifier"]},
    ),
    "deberta-v2": (
        tm.deberta_v2,
        "deberta.encoder.layer",
        2,
        {
            EMBEDDINGS: ["deberta.embeddings"],
            HEAD: ["pooler", "classifier", "dropout"],
            OTHER: ["deberta.encoder.rel_embeddings", "deberta.encoder.LayerNorm"],
        },
    ),
    "modernbert": (
        tm.modernbert,
        "model.layers",
        3,
        {
            EMBEDDINGS: ["model.embeddings"],
            HEAD: ["model.final_norm", "model.rotary_emb", "head", "drop", "classifier"],
        },
    ),
    "gpt2": (
        tm.gpt2,
        "transformer.h",
        2,
        {EMBEDDINGS: ["transformer.wte", "transformer.wpe", "transformer.drop"], HEAD: ["transformer.ln_f", "score"]},
    ),
    "llama": (
        tm.llama,
        "model.layers",
        2,
        {EMBEDDINGS: ["model.embed_tokens"], HEAD: ["model.norm", "model.rotary_emb", "score"]},
    ),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_models(case: str) -> None:
    builder, stack, num_layers, expected = HF_CASES[case]
    model = builder()
    layer_map = discover_layers(model)
    assert layer_map.source == f"known layout for model_type={case!r}"
    assert layer_map.num_layers == num_layers
    assert layer_map.layer_paths == [f"{stack}.{i}" for i in range(num_layers)]
    assert not layer_map.shared_layers
    assert_partition(model, layer_map)
    assert_block_params(layer_map, stack)
    for group, paths in expected.items():
        assert sorted(layer_map.group(group).module_paths) == sorted(paths), group
    for i in range(num_layers):
        assert layer_map.group(f"layer.{i}").module_paths == [f"{stack}.{i}"]
    # The classification layer is always trained by the head group, never frozen with the embeddings.
    head_params = params_of(layer_map, HEAD)
    assert any(("classifier" in n or "score" in n) for n in head_params), head_params


def test_electra_projection_is_embedding_side() -> None:
    model = tm.electra()
    assert model.config.embedding_size != model.config.hidden_size
    layer_map = discover_layers(model)
    assert "electra.embeddings_project.weight" in params_of(layer_map, EMBEDDINGS)
    assert "electra.embeddings_project.bias" in params_of(layer_map, EMBEDDINGS)


@pytest.mark.parametrize("conv_kernel_size", [0, 3])
def test_deberta_shared_inputs_are_other(conv_kernel_size: int) -> None:
    layer_map = discover_layers(tm.deberta_v2(conv_kernel_size=conv_kernel_size))
    other = params_of(layer_map, OTHER)
    assert "deberta.encoder.rel_embeddings.weight" in other
    assert {"deberta.encoder.LayerNorm.weight", "deberta.encoder.LayerNorm.bias"} <= set(other)
    has_conv = any(n.startswith("deberta.encoder.conv.") for n in other)
    assert has_conv == bool(conv_kernel_size)
    expected = ["deberta.encoder.rel_embeddings", "deberta.encoder.LayerNorm"]
    assert layer_map.group(OTHER).module_paths == expected + (["deberta.encoder.conv"] if conv_kernel_size else [])


def test_deberta_without_relative_attention() -> None:
    """The known layout lists rel_embeddings; a model built without them still maps (absent paths are dropped)."""
    model = tm.deberta_v2(relative_attention=False)
    layer_map = discover_layers(model)
    assert_partition(model, layer_map)
    assert not any("rel_embeddings" in n for n, _ in model.named_parameters())
    assert layer_map.group(OTHER).module_paths == ["deberta.encoder.LayerNorm"]  # norm_rel_ebd="layer_norm" builds it


@pytest.mark.parametrize(("hidden_layers", "hidden_groups"), [(2, 1), (4, 2)])
def test_albert_layer_i_is_hidden_group_i(hidden_layers: int, hidden_groups: int) -> None:
    """ALBERT shares blocks across depth: the layer groups are its hidden groups, not its depth."""
    model = tm.albert(num_hidden_layers=hidden_layers, num_hidden_groups=hidden_groups)
    layer_map = discover_layers(model)
    assert_partition(model, layer_map)
    assert layer_map.shared_layers
    assert layer_map.num_layers == hidden_groups  # one group with the default num_hidden_groups=1
    assert layer_map.layer_paths == [f"albert.encoder.albert_layer_groups.{i}" for i in range(hidden_groups)]
    assert sorted(layer_map.group(EMBEDDINGS).module_paths) == [
        "albert.embeddings",
        "albert.encoder.embedding_hidden_mapping_in",
    ]
    with pytest.raises(StrategyConfigError, match="hidden group") as err:
        build_strategy("bottom_n", {"n": hidden_groups + 1}).check(layer_map)
    assert err.value.field == "n"


def test_bare_base_model_uses_layout_without_prefix() -> None:
    model = tm.bare_bert()
    layer_map = discover_layers(model)
    assert layer_map.source == "known layout for base model_type='bert'"
    assert layer_map.layer_paths == ["encoder.layer.0", "encoder.layer.1"]
    assert layer_map.group(EMBEDDINGS).module_paths == ["embeddings"]
    assert layer_map.group(HEAD).module_paths == ["pooler"]
    assert_partition(model, layer_map)


def test_seed_classifier_numeric_head_and_layer_prefixes() -> None:
    """The lesson: ``"layer.1" in name`` also matches layer.10 and layer.11. Discovery uses whole path components."""
    model = tm.SeedClassifier(num_layers=12)
    layer_map = discover_layers(model)
    assert layer_map.source.startswith("structural fallback")
    assert layer_map.num_layers == 12
    assert_partition(model, layer_map)
    assert_block_params(layer_map, "bert.encoder.layer")
    layer1 = params_of(layer_map, "layer.1")
    assert not any(n.startswith(("bert.encoder.layer.10.", "bert.encoder.layer.11.")) for n in layer1)
    assert len(layer1) == len(params_of(layer_map, "layer.10")) == len(params_of(layer_map, "layer.11"))
    assert layer_map.group(EMBEDDINGS).module_paths == ["bert.embeddings"]
    assert sorted(layer_map.group(HEAD).module_paths) == ["bert.pooler", "head"]
    assert {"head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"} <= set(params_of(layer_map, HEAD))


RESNET_GROUPS = {
    EMBEDDINGS: ["conv1", "bn1", "relu", "maxpool"],
    **{f"layer.{i}": [f"layer{i + 1}"] for i in range(4)},
    HEAD: ["avgpool", "fc"],
}


def assert_resnet(model: nn.Module) -> None:
    layer_map = discover_layers(model)
    assert layer_map.num_layers == 4
    assert_partition(model, layer_map)
    for group, paths in RESNET_GROUPS.items():
        assert layer_map.group(group).module_paths == paths, group
    assert params_of(layer_map, HEAD) == ["fc.weight", "fc.bias"]


def test_resnet_replica() -> None:
    model = tm.TinyResNet()
    assert_resnet(model)
    assert discover_layers(model).source == "known layout for torchvision/timm ResNet"
    model(torch.randn(2, 3, 32, 32))  # the replica is a working network


def test_torchvision_resnet18() -> None:
    models = pytest.importorskip("torchvision.models", reason="torchvision is not importable here")
    assert_resnet(models.resnet18(num_classes=3))


def test_timm_resnet18() -> None:
    timm = pytest.importorskip("timm", reason="timm is not importable here (it needs torchvision)")
    assert_resnet(timm.create_model("resnet18", pretrained=False, num_classes=3))


def test_root_level_parameter_goes_to_other_without_module_path() -> None:
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(8))
            self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2))
            self.fc = nn.Linear(8, 2)

    model = WithToken()
    layer_map = discover_layers(model)
    assert_partition(model, layer_map)
    assert params_of(layer_map, OTHER) == ["cls_token"]
    assert layer_map.group(OTHER).module_paths == []  # a parameter is not a module: nothing to put in eval mode
    assert layer_map.group(OTHER).modules(model) == []


# -- when discovery fails, and explicit layers ----------------------------------------------------------------------


def test_unmappable_model_error_shows_layers_section() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(LayerDiscoveryError) as err:
        discover_layers(model)
    message = str(err.value)
    assert "layers:\n  layers:" in message
    assert "LayerSpec(layers=" in message
    assert "embeddings:" in message and "head:" in message


def test_explicit_spec_overrides_and_orders_groups() -> None:
    model = tm.MLPStack(num_layers=5)
    layer_map = discover_layers(model, LayerSpec(layers="blocks"))
    assert layer_map.source == "explicit layers: section"
    assert layer_map.layer_paths == [f"blocks.{i}" for i in range(5)]
    assert_partition(model, layer_map)
    assert layer_map.group(EMBEDDINGS).module_paths == ["embed"]
    assert layer_map.group(HEAD).module_paths == ["out"]


def test_explicit_spec_wins_over_known_layout() -> None:
    model = tm.bert()
    spec = LayerSpec(layers=["bert.encoder.layer.1"], embeddings=["bert.encoder.layer.0"], head="classifier")
    layer_map = discover_layers(model, spec)
    assert layer_map.num_layers == 1
    assert layer_map.group(EMBEDDINGS).module_paths == ["bert.encoder.layer.0", "bert.embeddings"]
    assert layer_map.group(HEAD).module_paths[0] == "classifier"  # a bare string is one path, not its characters
    assert_partition(model, layer_map)


def test_explicit_list_of_block_paths() -> None:
    model = tm.TwoTower()
    layer_map = discover_layers(model, LayerSpec(layers=["tower_a", "tower_b"]))
    assert layer_map.layer_paths == ["tower_a", "tower_b"]
    assert layer_map.names == ["layer.0", "layer.1", HEAD]
    assert params_of(layer_map, HEAD) == ["head.weight", "head.bias"]


@pytest.mark.parametrize(
    ("spec", "path", "section"),
    [
        (LayerSpec(layers="encoder.blocks"), "encoder.blocks", "layers"),
        (LayerSpec(layers=["blocks.0", "blocks.7"]), "blocks.7", "layers"),
        (LayerSpec(layers="blocks", head=["classifier"]), "classifier", "head"),
        (LayerSpec(layers="blocks", embeddings=["embed.weight"]), "embed.weight", "embeddings"),
    ],
)
def test_explicit_spec_bad_path_names_it(spec: LayerSpec, path: str, section: str) -> None:
    with pytest.raises(LayerDiscoveryError) as err:
        discover_layers(tm.MLPStack(), spec)
    message = str(err.value)
    assert repr(path) in message
    assert f"layers.{section}" in message
    assert "['embed', 'blocks', 'out']" in message  # what does exist


@pytest.mark.parametrize(
    "spec",
    [
        LayerSpec(layers="blocks", embeddings=["blocks.0"]),
        LayerSpec(layers="blocks", head=["blocks"]),
        LayerSpec(layers=["blocks", "blocks.1"]),
        LayerSpec(layers="blocks", embeddings=["embed"], head=["embed"]),
    ],
)
def test_explicit_spec_overlapping_paths_rejected(spec: LayerSpec) -> None:
    with pytest.raises(LayerDiscoveryError, match=r"overlaps|already in group"):
        discover_layers(tm.MLPStack(), spec)


def test_explicit_spec_empty_stack_rejected() -> None:
    model = tm.MLPStack()
    model.blocks = nn.ModuleList()
    with pytest.raises(LayerDiscoveryError, match="names no blocks"):
        discover_layers(model, LayerSpec(layers="blocks"))
    with pytest.raises(LayerDiscoveryError, match="names no blocks"):
        discover_layers(model, LayerSpec(layers=[]))
