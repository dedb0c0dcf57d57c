"""The one place where plans meet the optimizer.

Why this exists: ``requires_grad=False`` alone is not a freeze. Adam/AdamW keep applying the momentum they collected
while a parameter was trainable, and decoupled weight decay shrinks it even with ``grad=None`` in some optimizers; so
a parameter that was trained and is then frozen keeps moving. Here a frozen parameter is **not in the optimizer at
all**: freezing removes its parameter groups and deletes its state; unfreezing adds *fresh* groups (no stale state).
Frozen parameters therefore stay bit-identical under every optimizer, which :class:`FreezeVerifier` checks.

Parameter groups are named ``<layer group>`` and ``<layer group>/no_decay``: biases and normalisation weights (any
parameter with ``ndim <= 1``, the rule timm uses) get no weight decay. The LR of every group is
``base_lr × lr_multiplier × schedule_factor(step)``; :meth:`FreezeController.set_lr_factor` applies the factor to every
group, including groups added after the scheduler was created.

Gradient checkpointing with ``use_reentrant=True`` drops the gradients of a checkpointed block whose inputs do not
require grad; with the embeddings and the blocks below it frozen, nothing feeding the first trainable block requires
grad, so that block silently stops training. :func:`ensure_trainable_input` (on by default in the controller) makes that
block's hidden-states input require grad.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from strategies.base import GroupSetting, Plan
from strategies.layers import EMBEDDINGS, LayerMap, layer_name

OptimizerFactory = Callable[[list[dict[str, Any]]], torch.optim.Optimizer]
NO_DECAY = "/no_decay"

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class FrozenParameterChanged(RuntimeError):
    """A parameter changed while it was frozen. This is a bug somewhere, and the trial must not be trusted."""


def optimizer_factory(func: Callable[..., torch.optim.Optimizer]) -> Callable[..., torch.optim.Optimizer]:
    """Mark a function ``f(param_groups, **kwargs) -> torch.optim.Optimizer`` as usable as ``training.optimizer:
    module:f``. The mark is what makes a plain function acceptable: without it, any importable callable
    (``os:system``) passed the study check and crashed the trial with an unrelated error."""
    func.__sweeps_optimizer_factory__ = True  # type: ignore[attr-defined]
    return func


def load_optimizer(ref: str) -> Any:
    """Import ``module:attr`` and check it is a ``torch.optim.Optimizer`` subclass or an :func:`optimizer_factory`;
    ``ValueError`` (naming the reference and what it is instead) otherwise."""
    import importlib
    import inspect

    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} for optimizer {ref!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (optimizer {ref!r})")
        obj = getattr(obj, part)
    if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
        return obj
    if callable(obj) and getattr(obj, "__sweeps_optimizer_factory__", False):
        return obj
    kind = f"class {obj.__qualname__}" if inspect.isclass(obj) else type(obj).__name__
    raise ValueError(
        f"{ref!r} is a {kind}, not a torch.optim.Optimizer subclass nor a function marked with "
        "@strategies.optim.optimizer_factory"
    )


def make_optimizer_factory(name: str, **kwargs: Any) -> OptimizerFactory:
    """An optimizer constructor by name: ``adamw``, ``adam``, ``sgd`` (``momentum`` etc. via kwargs), ``adafactor``
    (from transformers), or any ``module:Class`` taking ``(param_groups, **kwargs)``."""
    key = name.lower()
    if key == "adamw":
        cls: Any = torch.optim.AdamW
    elif key == "adam":
        cls = torch.optim.Adam
    elif key == "sgd":
        cls = torch.optim.SGD
    elif key == "adafactor":
        from transformers.optimization import Adafactor

        cls = Adafactor
        kwargs = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **kwargs}
    elif ":" in name:
        cls = load_optimizer(name)
    else:
        raise ValueError(f"unknown optimizer {name!r}: use adamw, adam, sgd, adafactor or 'module:Class'")

    def factory(groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
        return cls(groups, **kwargs)

    return factory


def no_decay(param: nn.Parameter) -> bool:
    """Biases and normalisation weights are not decayed (structural rule: one-dimensional tensors)."""
    return param.ndim <= 1


def checksum(params: Iterable[torch.Tensor]) -> str:
    """SHA-256 over the exact bytes of ``params`` (any dtype, any device). The hash reads the array's buffer: no
    extra copy of every frozen tensor per checksum."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


class FreezeVerifier:
    """Checksums every frozen interval of every group: taken when the group freezes, compared when it unfreezes and at
    the end of training. ``verified`` is the proof logged as the ``frozen_params_verified`` tag."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[str, list[nn.Parameter]]] = {}
        self.failures: list[str] = []
        self.checked = 0

    def frozen(self, group: str, params: list[nn.Parameter]) -> None:
        self._open[group] = (checksum(params), params)

    def unfrozen(self, group: str) -> None:
        self._compare(group, self._open.pop(group))

    def _compare(self, group: str, entry: tuple[str, list[nn.Parameter]]) -> None:
        before, params = entry
        self.checked += 1
        if checksum(params) != before and group not in self.failures:
            self.failures.append(group)

    def finish(self) -> bool:
        """Compare every still-frozen group (they stay open: training may go on); True when no frozen parameter ever
        changed."""
        for group, entry in list(self._open.items()):
            self._compare(group, entry)
        return not self.failures

    @property
    def verified(self) -> bool:
        return not self.failures


class FreezeController:
    """Applies :data:`Plan` s to a model and its optimizer.

    It owns the optimizer (built lazily from ``optimizer_factory`` on the first :meth:`apply`), the ``requires_grad``
    flags, train/eval modes of frozen blocks and the checksums. ``frozen_dropout`` keeps dropout active inside frozen
    blocks (default off: frozen blocks are deterministic, and their output can be cached); ``train_bn`` lets BatchNorm
    in frozen blocks update its running statistics (default off: frozen means frozen). ``trainable_input`` keeps
    the first trainable block's input requiring grad (see :func:`ensure_trainable_input`). ``exclude`` names
    parameters that never receive a gradient (:func:`strategies.unused.find_unused_parameters`): they stay out of the
    optimizer and out of :meth:`trainable_params` whatever the plan says, and are checksummed like a frozen group.
    """

    def __init__(
        self,
        model: nn.Module,
        layer_map: LayerMap,
        optimizer_factory: OptimizerFactory,
        base_lr: float,
        weight_decay: float = 0.0,
        *,
        frozen_dropout: bool = False,
        train_bn: bool = False,
        verify: bool = True,
        trainable_input: bool = True,
        exclude: Iterable[str] = (),
    ) -> None:
        self.model = model
        self.layer_map = layer_map
        self.optimizer_factory = optimizer_factory
        self.base_lr = float(base_lr)
        self.weight_decay = float(weight_decay)
        self.frozen_dropout = frozen_dropout
        self.train_bn = train_bn
        self.verifier = FreezeVerifier() if verify else None
        self.trainable_input = trainable_input
        self._input_hook: RemovableHandle | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.plan: Plan | None = None
        self.lr_factor = 1.0
        self.history: list[tuple[str, list[str]]] = []  # (event, groups) for logs and tests
        self.excluded = self._exclude(frozenset(exclude))

    def _exclude(self, names: frozenset[str]) -> frozenset[str]:
        """Take ``names`` out of training for good: no grad, never in a parameter group, checksummed as ``excluded``."""
        params = dict(self.model.named_parameters())
        unknown = sorted(names - set(params))
        if unknown:
            raise ValueError(f"exclude names parameters the model does not have: {unknown}")
        for name in names:
            params[name].requires_grad_(False)
            params[name].grad = None
        if self.verifier is not None and names:
            self.verifier.frozen("excluded", [params[n] for n in sorted(names)])
        return names
    # -- plans -------------------------------------------------------------------------------------------------
    def apply(self, plan: Plan) -> bool:
        """Make ``plan`` current. Returns True when anything changed."""
        self._check_plan(plan)
        old = self.plan or {}
        if plan == old:
            return False
        to_freeze = [n for n in self.layer_map.names if plan[n].frozen and (n not in old or not old[n].frozen)]
        to_unfreeze = [n for n in self.layer_map.names if not plan[n].frozen and (n not in old or old[n].frozen)]
        for name in to_freeze:
            self._freeze(name)
        for name in to_unfreeze:
            self._unfreeze(name, plan[name])
        for name, setting in plan.items():  # multiplier changes of groups that stay trainable
            if not setting.frozen and name not in to_unfreeze and old[name].lr_multiplier != setting.lr_multiplier:
                self._set_multiplier(name, setting.lr_multiplier)
        self.plan = dict(plan)
        self._place_input_hook()
        if to_freeze:
            self.history.append(("freeze", to_freeze))
        if to_unfreeze and old:
            self.history.append(("unfreeze", to_unfreeze))
        return True

    def _check_plan(self, plan: Plan) -> None:
        """Reject plans that name the wrong groups or leave nothing to train, before anything is changed."""
        names = set(self.layer_map.names)
        missing, unknown = names - set(plan), set(plan) - names
        if missing:
            raise ValueError(f"plan does not cover layer groups {sorted(missing)}")
        if unknown:
            raise ValueError(f"plan names unknown layer groups {sorted(unknown)}; groups are {self.layer_map.names}")
        if not any(self._params(n) for n in names if not plan[n].frozen):
            raise ValueError("the plan freezes every layer group that has parameters: nothing would train")

    def _place_input_hook(self) -> None:
        """Re-place the trainable-input hook for the current plan (the first trainable block moves with the plan)."""
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None
        if self.trainable_input and self.plan is not None:
            self._input_hook = ensure_trainable_input(self.model, self.layer_map, self.plan)

    def remove_hooks(self) -> None:
        """Detach the controller's forward hooks from the model (e.g. before exporting it)."""
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None

    def _params(self, name: str) -> list[nn.Parameter]:
        """The group's parameters the controller manages (excluded ones are never trained)."""
        return [p for n, p in self.layer_map.group(name).params if n not in self.excluded]

    def _freeze(self, name: str) -> None:
        params = self._params(name)
        if self.optimizer is not None:
            ids = {id(p) for p in params}
            self.optimizer.param_groups[:] = [
                g for g in self.optimizer.param_groups if not any(id(p) in ids for p in g["params"])
            ]
            for p in params:
                self.optimizer.state.pop(p, None)
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        if self.verifier is not None and params:
            self.verifier.frozen(name, params)

    def _unfreeze(self, name: str, setting: GroupSetting) -> None:
        params = self._params(name)
        if self.verifier is not None and self.plan is not None and name in self.plan and params:
            self.verifier.unfrozen(name)
        for p in params:
            p.requires_grad_(True)
        groups = self._param_groups(name, params, setting.lr_multiplier)
        if not groups:
            return
        if self.optimizer is None:
            self.optimizer = self.optimizer_factory(groups)
        else:
            for g in groups:
                self.optimizer.add_param_group(g)

    def _param_groups(self, name: str, params: list[nn.Parameter], multiplier: float) -> list[dict[str, Any]]:
        decay = [p for p in params if not no_decay(p)]
        plain = [p for p in params if no_decay(p)]
        out = []
        for suffix, members, wd in (("", decay, self.weight_decay), (NO_DECAY, plain, 0.0)):
            if members:
                out.append(
                    {
                        "params": members,
                        "name": name + suffix,
                        "layer_group": name,
                        "lr_multiplier": multiplier,
                        "weight_decay": wd,
                        "lr": self.base_lr * multiplier * self.lr_factor,
                    }
                )
        return out

    def _set_multiplier(self, name: str, multiplier: float) -> None:
        assert self.optimizer is not None
        for g in self.optimizer.param_groups:
            if g.get("layer_group") == name:
                g["lr_multiplier"] = multiplier
                g["lr"] = self.base_lr * multiplier * self.lr_factor

    # -- learning rates --------------------------------------------------------------------------------------------
    def set_lr_factor(self, factor: float) -> None:
        """Apply a schedule factor (warmup/decay) to every group, whenever it was added."""
        self.lr_factor = float(factor)
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                g["lr"] = self.base_lr * g.get("lr_multiplier", 1.0) * self.lr_factor

    def learning_rates(self) -> dict[str, float]:
        """Current LR of every layer group (0.0 for frozen groups), for ``lr/<group>`` metrics."""
        out = {name: 0.0 for name in self.layer_map.names}
        if self.optimizer is not None:
            for g in self.optimizer.param_groups:
                out[g.get("layer_group", g.get("name", "?"))] = float(g["lr"])
        return out

    def trainable_params(self) -> int:
        """Number of trainable parameter elements (what the optimizer updates)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def frozen_params(self) -> int:
        """Number of frozen parameter elements (excluded ones included: they do not train either)."""
        return sum(p.numel() for p in self.model.parameters() if not p.requires_grad)

    def excluded_params(self) -> int:
        """Number of parameter elements excluded because they never receive a gradient."""
        return sum(p.numel() for n, p in self.model.named_parameters() if n in self.excluded)

    # -- modes ------------------------------------------------------------------------------------------------------
    def train_mode(self) -> None:
        """``model.train()``, then frozen blocks back to eval, except as the two explicit settings say.

        ``model.eval()`` is not freezing, and ``requires_grad`` is not eval mode: this is where the two meet. A frozen
        block in train mode still changes: BatchNorm updates its running statistics and dropout makes its output random
        (so it cannot be cached). ``frozen_dropout=True`` leaves frozen blocks in train mode (transformers' attention
        dropout is functional, gated by the attention module's own ``training`` flag, so switching only ``nn.Dropout``
        modules would not do); BatchNorm follows ``train_bn`` either way.
        """
        self.model.train()
        if self.plan is None:
            return
        for name, setting in self.plan.items():
            if not setting.frozen:
                continue
            for module in self.layer_map.group(name).modules(self.model):
                module.train(self.frozen_dropout)
                for sub in module.modules():
                    if isinstance(sub, _BN_TYPES):
                        sub.train(self.train_bn)

    def eval_mode(self) -> None:
        self.model.eval()

    def finish(self) -> bool:
        """Final checksum comparison of every group frozen at the end; True when nothing frozen ever moved."""
        return self.verifier.finish() if self.verifier is not None else True

    def require_verified(self) -> None:
        """Raise :class:`FrozenParameterChanged` unless every frozen interval so far (including the groups frozen now)
        left its parameters bit-identical."""
        if not self.finish():
            assert self.verifier is not None
            raise FrozenParameterChanged(
                f"frozen parameters changed in groups {self.verifier.failures}: the freeze did not hold"
            )


def first_trainable_block(layer_map: LayerMap, plan: Plan) -> int | None:
    """Index of the block whose input nothing upstream makes require grad: the lowest trainable block when the
    embeddings (or the raw input, for models without an embeddings group) and every block below it are frozen.
    ``None`` when the embeddings train (their output already requires grad) or no block trains."""
    if EMBEDDINGS in layer_map.names and layer_map.group(EMBEDDINGS).params and not plan[EMBEDDINGS].frozen:
        return None
    for i in range(layer_map.num_layers):
        if not plan[layer_name(i)].frozen:
            return i if layer_map.group(layer_name(i)).params else None
    return None


def ensure_trainable_input(model: nn.Module, layer_map: LayerMap, plan: Plan) -> RemovableHandle | None:
    """Register a forward pre-hook on the first trainable block (see :func:`first_trainable_block`) that replaces its
    hidden-states input (first positional argument, else ``hidden_states=``) by ``x.detach().requires_grad_(True)``
    when ``x`` does not require grad. Returns the hook handle (``None`` when no block needs it).

    Why: a reentrant checkpoint (``use_reentrant=True``) only back-propagates into a block when one of its inputs
    requires grad, so under ``bottom_n`` the lowest trainable block got no gradients at all. The hook cuts no gradient
    path (the input had none) and costs one input gradient per step. It runs outside the checkpoint with transformers
    layers (they checkpoint ``forward``, not ``__call__``); a hand-written ``checkpoint(block, x)`` runs the hook inside
    the checkpoint, so there use ``use_reentrant=False`` (PyTorch's recommended mode, which needs no hook).
    """
    index = first_trainable_block(layer_map, plan)
    if index is None:
        return None
    block = model.get_submodule(layer_map.layer_paths[index])
    return block.register_forward_pre_hook(_require_grad_input, with_kwargs=True)


def _needs_grad_leaf(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad


def _require_grad_input(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    if not torch.is_grad_enabled():
        return None  # evaluation: nothing to back-propagate
    if args:
        if _needs_grad_leaf(args[0]):
            return (args[0].detach().requires_grad_(True), *args[1:]), kwargs
        return None
    if _needs_grad_leaf(kwargs.get("hidden_states")):
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_(True)}
    return None
