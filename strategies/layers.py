"""Layer discovery: map a model onto ordered layer groups, structurally.

Every strategy speaks in *layer groups*: ``embeddings``, ``layer.0`` … ``layer.{L-1}`` (bottom to top), ``head``
(everything above the last block: final norm, pooler, classifier) and ``other`` (parameters that belong to none, for
example DeBERTa's relative position embeddings that every layer reads). Each parameter lands in exactly one group.

Groups are found by *module paths* resolved with :meth:`torch.nn.Module.get_submodule`, never by substring tests on
parameter names: ``"layer.1"`` is a prefix of ``layer.10`` and ``layer.11``, which is how hand-written freezing code
silently freezes the wrong blocks. The rules, in order of precedence:

1. an explicit :class:`LayerSpec` (from the study file's ``layers:`` section);
2. a small table of known layouts (``KNOWN_LAYOUTS``), keyed by the transformers ``config.model_type`` or the
   presence of attribute paths (torchvision ResNets);
3. a structural fallback: the longest ``nn.ModuleList`` whose children are all of one type (the block stack);
4. a flat layout for plain models (:func:`_flat_layout`): the top-level children that hold parameters, in definition
   order, are ``layer.0`` … ``layer.{L-1}`` and the last one is ``head`` (``fc1..fc5`` → ``layer.0-3`` + ``head``);
   leading ``nn.Embedding`` children are the embeddings. Only models that no earlier rule maps get this layout.

Once the block stack is known, the remaining modules are sorted by their place in the module tree: at each ancestor
of the stack, children registered *before* it are the embedding side and children registered *after* it are the head
side. This one rule covers BERT (``bert.embeddings`` / ``bert.pooler`` + ``classifier``), GPT-2 (``wte``, ``wpe`` /
``ln_f`` + ``score``), Llama (``embed_tokens`` / ``norm`` + ``score``) and a user's ``nn.Module`` with an
``nn.Sequential`` head whose children are named ``0``, ``1``, ``2``.

One exception makes the rule robust to registration order: a *pretrained body* (a transformers ``PreTrainedModel``,
recognised by its ``config`` and ``base_model_prefix``) that contains the stack is the whole input side of its parent,
so every sibling of it is the head side whatever order they were registered in. ``XLMRobertaForSequenceClassification``
registers ``classifier`` *before* ``roberta``; by position alone its classifier would be frozen with the embeddings.

Image classifiers: for CNNs (torchvision/timm and Hugging Face ResNet, ConvNeXt) and hierarchical transformers (Swin)
``layer.i`` is a *stage*, not a block; for plain ViTs (ViT, DeiT, DINOv2) it is an encoder block. A stage is where
resolution and width change, so a frozen prefix of stages is a fixed feature extractor at one resolution — how CNN
fine-tuning is usually described ("freeze up to stage 3") — and it matches torchvision's ``layer1..4`` and timm's
coarse ``group_matcher``. Per-block groups would make ``n`` mean different things in different stages (ResNet-50's 16
blocks sit in stages of 3, 4, 6, 3). The stem or patch embeddings are ``embeddings``; the final norm, pooler and
classifier are ``head``. A study that wants blocks declares them with ``layers:`` (a list of block paths).

ALBERT shares its blocks across depth: its stack is ``albert_layer_groups`` (``num_hidden_groups`` distinct blocks,
each run ``num_hidden_layers / num_hidden_groups`` times), so there ``layer.i`` means *hidden group i*, not depth i,
and ``LayerMap.shared_layers`` is true. With the default ``num_hidden_groups=1`` there is a single layer group.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

EMBEDDINGS = "embeddings"
HEAD = "head"
OTHER = "other"


class LayerDiscoveryError(ValueError):
    """The model's layer groups could not be found; the message says how to declare them explicitly."""


def layer_name(index: int) -> str:
    """Group name of block ``index`` (0 = the block nearest the input)."""
    return f"layer.{index}"


@dataclass(frozen=True)
class LayerSpec:
    """An explicit grouping, as written in a study file's ``layers:`` section.

    ``layers`` is either one path to an ``nn.ModuleList``/``nn.Sequential`` of blocks or an ordered list of block
    paths (bottom first). ``embeddings``, ``head`` and ``other`` list module paths; modules not listed are sorted by
    the before/after rule described in the module docstring.
    """

    layers: str | Sequence[str]
    embeddings: Sequence[str] = ()
    head: Sequence[str] = ()
    other: Sequence[str] = ()

    def __post_init__(self) -> None:
        # YAML users write ``head: classifier`` as often as ``head: [classifier]``; iterating the string would look up
        # the paths "c", "l", "a", ... and report a confusing error.
        for name in ("embeddings", "head", "other"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not isinstance(self.layers, str):
            object.__setattr__(self, "layers", tuple(self.layers))


# Known layouts. Paths are relative to the model root. ``layers`` names the block stack; ``other`` lists modules that
# sit beside the stack but feed every block (so they are neither the embedding side nor the head side).
KNOWN_LAYOUTS: dict[str, LayerSpec] = {
    "bert": LayerSpec(layers="bert.encoder.layer"),
    "roberta": LayerSpec(layers="roberta.encoder.layer"),
    "xlm-roberta": LayerSpec(layers="roberta.encoder.layer"),
    "electra": LayerSpec(layers="electra.encoder.layer"),
    "distilbert": LayerSpec(layers="distilbert.transformer.layer"),
    "deberta-v2": LayerSpec(
        layers="deberta.encoder.layer",
        other=("deberta.encoder.rel_embeddings", "deberta.encoder.LayerNorm", "deberta.encoder.conv"),
    ),
    "albert": LayerSpec(layers="albert.encoder.albert_layer_groups"),
    "gpt2": LayerSpec(layers="transformer.h"),
    "llama": LayerSpec(layers="model.layers"),
    "mistral": LayerSpec(layers="model.layers"),
    "qwen2": LayerSpec(layers="model.layers"),
    "modernbert": LayerSpec(layers="model.layers"),
    # Hugging Face image classifiers (AutoModelForImageClassification). CNNs and hierarchical transformers map one
    # *stage* to layer.i (see the module docstring); plain ViTs one encoder block. Paths as in transformers 5.x
    # (ViT/DeiT blocks moved from vit.encoder.layer to vit.layers; older versions reach the same blocks through the
    # structural fallback).
    "resnet": LayerSpec(layers="resnet.encoder.stages"),
    "convnext": LayerSpec(layers="convnext.encoder.stages"),
    "convnextv2": LayerSpec(layers="convnextv2.encoder.stages"),
    "swin": LayerSpec(layers="swin.encoder.layers"),
    "swinv2": LayerSpec(layers="swinv2.encoder.layers"),
    "vit": LayerSpec(layers="vit.layers"),
    "deit": LayerSpec(layers="deit.layers"),
    "dinov2": LayerSpec(layers="dinov2.encoder.layer"),
}


# Model types whose blocks are shared across depth: "freeze layer i" cannot mean one depth there.
SHARED_LAYER_MODEL_TYPES = {"albert"}

RESNET_LAYOUT = LayerSpec(layers=("layer1", "layer2", "layer3", "layer4"))


@dataclass
class LayerGroup:
    """One group: its name, the module paths it owns and its parameters (name, tensor) in model order."""

    name: str
    module_paths: list[str]
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for _, p in self.params)

    def modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_submodule(path) for path in self.module_paths]


@dataclass
class LayerMap:
    """The model as ordered groups: ``embeddings``, ``layer.0`` … ``layer.{L-1}``, ``head``, ``other``.

    ``shared_layers`` marks models such as ALBERT where one block object runs at several depths; the block list then
    holds the distinct shared blocks (ALBERT's hidden groups), and ``layer.i`` means "hidden group i".
    """

    groups: list[LayerGroup]
    layer_paths: list[str]
    source: str
    shared_layers: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layer_paths)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def group(self, name: str) -> LayerGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no layer group {name!r}; groups are {self.names}")

    def bottom_up(self) -> list[str]:
        """Group names in depth order: embeddings, layer.0 … layer.{L-1}, head (``other`` excluded)."""
        return [EMBEDDINGS, *(layer_name(i) for i in range(self.num_layers)), HEAD]

    def layer_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.get_submodule(p) for p in self.layer_paths]


def _children_paths(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{name}" if prefix else name, child) for name, child in module.named_children()]


def _find_block_stack(model: nn.Module) -> str | None:
    """Structural fallback: the path of the longest ModuleList/Sequential of ≥2 children of one type."""
    best: tuple[int, str] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) != 1:
            continue
        # Skip stacks of leaf layers (an nn.Sequential of Linear/ReLU is a head, not a block stack).
        if not any(True for _ in next(iter(module)).children()):
            continue
        if best is None or len(module) > best[0]:
            best = (len(module), path)
    return best[1] if best else None


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def _flat_layout(model: nn.Module) -> LayerSpec | None:
    """Plain models: the parameter-holding children of the root, in definition order, are the blocks and the last
    one is the head.

    A custom module's named children (``fc1 = nn.Linear(...)``, ...) are the user's own list of layers, so leaf
    children count. An ``nn.Sequential`` (the root, or the root's only child with parameters) counts only when its
    children are blocks (modules with children of their own), except for the final head: an anonymous sequence of
    leaf layers such as ``Sequential(Linear, ReLU, Linear)`` is the shape of an MLP head, and guessing layers in it
    would be a guess. Leading ``nn.Embedding`` children become the embeddings group. At least one block and a head
    are needed, and no block may be an ``nn.ModuleList``/``nn.ModuleDict`` (a list of blocks is not one block).
    """
    prefix, root = "", model
    if not isinstance(model, nn.Sequential):
        kids = [(name, child) for name, child in model.named_children() if _has_params(child)]
        if len(kids) == 1 and isinstance(kids[0][1], nn.Sequential):  # a wrapper around one Sequential
            prefix, root = kids[0]
    kids = [(f"{prefix}.{name}" if prefix else name, child) for name, child in root.named_children()]
    kids = [(path, child) for path, child in kids if _has_params(child)]
    embeddings: list[str] = []
    while kids and isinstance(kids[0][1], (nn.Embedding, nn.EmbeddingBag)):
        embeddings.append(kids.pop(0)[0])
    if len(kids) < 2:
        return None
    *blocks, (head, _) = kids
    if isinstance(root, nn.Sequential) and any(_is_leaf(child) for _, child in blocks):
        return None
    if any(isinstance(child, (nn.ModuleList, nn.ModuleDict)) for _, child in blocks):
        return None  # a list of (leaf) blocks the stack rule refused: one "layer" of many would mislead; declare it
    return LayerSpec(layers=[path for path, _ in blocks], embeddings=embeddings, head=[head])


def _resolve_layer_paths(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        container = _get(model, layers, "layers")
        if isinstance(container, (nn.ModuleList, nn.Sequential)):
            # A stack at the root (a bare nn.Sequential of blocks) has children "0", "1", ..., not ".0", ".1", ...
            paths = [f"{layers}.{name}" if layers else name for name, _ in container.named_children()]
        else:
            paths = [layers]
    else:
        paths = list(layers)
        for p in paths:
            _get(model, p, "layers")
    if not paths:
        raise LayerDiscoveryError(
            f"layers.layers: {layers!r} names no blocks; give a non-empty ModuleList or a list of block paths"
        )
    _check_disjoint([(p, "layers") for p in paths])
    return paths


def _check_disjoint(entries: list[tuple[str, str]]) -> None:
    """Declared paths must not nest: a group that contains another group's block would put that block in eval mode
    (and freeze it) together with its own modules."""
    for i, (path, group) in enumerate(entries):
        for other_path, other_group in entries[i + 1 :]:
            if _is_prefix(path, other_path) or _is_prefix(other_path, path):
                raise LayerDiscoveryError(
                    f"layers.{other_group}: {other_path!r} overlaps {path!r} (layers.{group}); "
                    "declared module paths must not contain one another"
                )


def _get(model: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        top = [name for name, _ in model.named_children()]
        raise LayerDiscoveryError(
            f"layers.{what}: module path {path!r} does not exist in {type(model).__name__} "
            f"(its top-level children are {top}); paths are dotted attribute paths as in model.get_submodule()"
        ) from exc


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def _known_layout(model: nn.Module) -> tuple[LayerSpec, str] | None:
    model_type = _model_type(model)
    if model_type in KNOWN_LAYOUTS:
        spec = KNOWN_LAYOUTS[model_type]
        try:
            model.get_submodule(spec.layers if isinstance(spec.layers, str) else spec.layers[0])
        except AttributeError:
            # e.g. a bare BertModel (no "bert." prefix): retry relative to the model itself.
            return _strip_base_prefix(model, spec, model_type)
        return _existing_only(model, spec), f"known layout for model_type={model_type!r}"
    if all(hasattr(model, name) for name in ("conv1", "layer1", "layer4", "fc")):
        return RESNET_LAYOUT, "known layout for torchvision/timm ResNet"
    return None


def _strip_base_prefix(model: nn.Module, spec: LayerSpec, model_type: str) -> tuple[LayerSpec, str] | None:
    assert isinstance(spec.layers, str)
    rest = spec.layers.split(".", 1)[1]
    try:
        model.get_submodule(rest)
    except AttributeError:
        return None
    strip = [p.split(".", 1)[1] for p in spec.other]
    base = LayerSpec(layers=rest, other=tuple(strip))
    return _existing_only(model, base), f"known layout for base model_type={model_type!r}"


def _existing_only(model: nn.Module, spec: LayerSpec) -> LayerSpec:
    """Known layouts list optional modules (DeBERTa's ``conv`` exists only with ``conv_kernel_size``, its
    ``rel_embeddings`` only with ``relative_attention``): drop absent ones."""

    def exists(path: str) -> bool:
        try:
            model.get_submodule(path)
        except AttributeError:
            return False
        return True

    return LayerSpec(layers=spec.layers, embeddings=tuple(filter(exists, spec.embeddings)),
                     head=tuple(filter(exists, spec.head)), other=tuple(filter(exists, spec.other)))


def _structural_layout(model: nn.Module) -> tuple[LayerSpec, str]:
    """Rules 3 and 4 of the module docstring: the longest stack of identical blocks, else the flat layout."""
    stack = _find_block_stack(model)
    if stack is not None:
        return LayerSpec(layers=stack), f"structural fallback (block stack at {stack!r})"
    flat = _flat_layout(model)
    if flat is not None:
        return flat, "flat layout (top-level children in definition order; the last one is the head)"
    top = [name for name, _ in model.named_children()]
    raise LayerDiscoveryError(
        f"cannot find the layer stack of {type(model).__name__} (top-level children: {top}): no known "
        "layout and no nn.ModuleList of repeated blocks. Declare it in the study file, e.g.\n"
        "layers:\n  layers: encoder.blocks        # a ModuleList, or a list of block paths bottom-first\n"
        "  embeddings: [embed]\n  head: [classifier]\n"
        "(in Python: discover_layers(model, LayerSpec(layers='encoder.blocks', embeddings=['embed'], "
        "head=['classifier'])))"
    )


def discover_layers(model: nn.Module, spec: LayerSpec | None = None) -> LayerMap:
    """Map ``model`` onto ordered layer groups. See the module docstring for the rules.

    Raises :class:`LayerDiscoveryError` when no block stack can be found, with the YAML to write instead.
    """
    if spec is not None:
        source = "explicit layers: section"
    else:
        spec, source = _known_layout(model) or _structural_layout(model)

    layer_paths = _resolve_layer_paths(model, spec.layers)
    assigned: dict[str, str] = {}  # module (or root-level parameter) path -> group name
    declared = [(path, "layers") for path in layer_paths]
    for i, path in enumerate(layer_paths):
        assigned[path] = layer_name(i)
    for group, paths in ((EMBEDDINGS, spec.embeddings), (HEAD, spec.head), (OTHER, spec.other)):
        for path in paths:
            _get(model, path, group)
            if path in assigned:
                raise LayerDiscoveryError(f"layers.{group}: {path!r} is already in group {assigned[path]!r}")
            declared.append((path, group))
            assigned[path] = group
    _check_disjoint(declared)
    _assign_by_position(model, layer_paths, assigned)

    groups = {name: LayerGroup(name, []) for name in [EMBEDDINGS, *map(layer_name, range(len(layer_paths))), HEAD]}
    groups[OTHER] = LayerGroup(OTHER, [])
    module_paths = {path for path, _ in model.named_modules()}
    for path, group in assigned.items():
        if path in module_paths:  # bare parameters (a CLS token on the root) have no module to put in eval mode
            groups[group].module_paths.append(path)
    # Every parameter goes to the group of its longest assigned ancestor path (checked per path component).
    for pname, param in model.named_parameters():
        groups[_owner(pname, assigned)].params.append((pname, param))
    ordered = [g for g in groups.values() if g.params or g.name.startswith("layer.") or g.name == HEAD]
    shared = _model_type(model) in SHARED_LAYER_MODEL_TYPES
    return LayerMap(groups=ordered, layer_paths=layer_paths, source=source, shared_layers=shared)


def _owner(param_name: str, assigned: dict[str, str]) -> str:
    """Group of the longest assigned path that is ``param_name`` itself or one of its module ancestors. Whole path
    components only: ``layer.1`` never owns ``layer.10.weight``."""
    parts = param_name.split(".")
    for cut in range(len(parts), 0, -1):
        owner = assigned.get(".".join(parts[:cut]))
        if owner is not None:
            return owner
    return OTHER


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]  # parent first, root ("") last


def _assign_by_position(model: nn.Module, layer_paths: list[str], assigned: dict[str, str]) -> None:
    """Children of each ancestor of the block stack: before it → embeddings side, after it → head side.

    The ancestors used are those of the stack container (the common parent of the blocks), walking up to the root;
    modules already assigned (or containing/inside an assigned path) are left alone. Root-level parameters that are
    not inside any module are assigned too (a bare ``nn.Parameter`` on the model, e.g. a CLS token).
    """
    container = _common_parent(layer_paths)
    chain = [container, *_ancestors(container)] if container else [""]
    for ancestor in chain:
        module = model.get_submodule(ancestor) if ancestor else model
        children = _children_paths(module, ancestor)
        # A pretrained body holding the stack is the whole input side: its siblings are all head (see module docstring).
        body = any(_is_body_of(module, path, child) and _holds_stack(path, layer_paths) for path, child in children)
        side = HEAD if body else EMBEDDINGS
        for child_path, _ in children:
            if _holds_stack(child_path, layer_paths):
                side = HEAD  # everything registered after the stack (or the child containing it) is the head side
                continue
            if _touches_assigned(child_path, assigned):
                continue
            assigned[child_path] = side
        for pname, _ in module.named_parameters(recurse=False):
            full = f"{ancestor}.{pname}" if ancestor else pname
            if not _touches_assigned(full, assigned):
                assigned[full] = OTHER


def _holds_stack(path: str, layer_paths: list[str]) -> bool:
    """``path`` is a block of the stack or contains one."""
    return any(_is_prefix(path, lp) for lp in layer_paths)


def _is_pretrained_body(module: nn.Module) -> bool:
    """A transformers ``PreTrainedModel`` (duck-typed, so this module needs no transformers import)."""
    return hasattr(module, "config") and hasattr(type(module), "base_model_prefix")


def _is_body_of(parent: nn.Module, child_path: str, child: nn.Module) -> bool:
    """``child`` is the pretrained body of ``parent``: a ``PreTrainedModel`` that is either the base model a
    transformers parent names (``base_model_prefix``, e.g. ``roberta`` in ``XLMRobertaForSequenceClassification``) or
    sits in a user's plain module. Inside a pretrained model, a pretrained *part* is no body: transformers 5 makes
    many encoders ``PreTrainedModel`` subclasses (``ConvNextEncoder``, ``SwinEncoder``), and taking one for the body
    would put the embeddings registered before it on the head side."""
    if not _is_pretrained_body(child):
        return False
    if not _is_pretrained_body(parent):
        return True
    return child_path.rsplit(".", 1)[-1] == getattr(type(parent), "base_model_prefix", None)


def _is_prefix(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _touches_assigned(path: str, assigned: Iterable[str]) -> bool:
    return any(_is_prefix(path, a) or _is_prefix(a, path) for a in assigned)


def _common_parent(paths: list[str]) -> str:
    split = [p.split(".") for p in paths]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    if len(paths) == 1:
        common = split[0][:-1]
    elif len(common) == min(len(s) for s in split):
        common = common[:-1]
    return ".".join(common)
