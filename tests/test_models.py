"""The model layer: names, hook points, substituted-weight calls, random-init twins."""

import pytest
import torch
from torch import nn

import modprobe as mp


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same_state(before, module):
    after = module.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.b = nn.Linear(4, 3)

    def forward(self, x, scale=1.0):
        return torch.cat([self.a(x), self.b(x)], dim=-1) * scale


def test_minilm_matches_plain_huggingface_with_padding(minilm):
    from transformers import AutoModel

    enc = minilm.tokenizer(["the cat sat", "dogs run fast every day"], padding=True,
                           return_tensors="pt")
    ours = minilm(dict(enc))
    ref = AutoModel.from_pretrained(str(mp.models.minilm_path()))(**enc).last_hidden_state
    assert ours.shape == ref.shape == (2, enc["input_ids"].shape[1], 384)
    assert torch.allclose(ours, ref, atol=1e-4)


def test_bridge_names_hide_aliases_and_original_component(minilm):
    names = minilm.param_names()
    assert len(names) == len(set(names)) == len({id(p) for p in minilm.module.parameters()})
    assert not any("_original_component" in n for n in names)
    assert "blocks.0.attn.q.weight" in names and "blocks.5.mlp.out.weight" in names
    assert len(minilm.param_names("blocks.*.mlp.*.weight")) == 12
    assert "blocks.3.hook_out" in minilm.hook_names


def test_forward_with_substitutes_for_one_call_and_leaves_bridge_intact(minilm):
    enc = dict(minilm.tokenizer(["a short sentence"], return_tensors="pt"))
    before = _state(minilm.module)
    plain = minilm(enc)
    w = minilm.params("blocks.0.attn.q.weight")
    assert torch.equal(minilm.forward_with(w, enc), plain)
    zeroed = minilm.forward_with({k: torch.zeros_like(v) for k, v in w.items()}, enc)
    assert (zeroed - plain).abs().max() > 1e-2
    assert _same_state(before, minilm.module)
    assert torch.equal(minilm(enc), plain)


def test_forward_with_on_plain_module_positional_and_keyword_inputs():
    hm = mp.wrap(TwoBranch())
    before = _state(hm.module)
    x = torch.randn(5, 4)
    plain = hm(x)
    assert torch.equal(hm.forward_with(hm.params(), x), plain)
    zero = hm.forward_with({"b.weight": torch.zeros(3, 4), "b.bias": torch.zeros(3)}, x)
    assert torch.equal(zero[:, 8:], torch.zeros(5, 3)) and torch.equal(zero[:, :8], plain[:, :8])
    assert torch.allclose(hm({"x": x, "scale": 2.0}), 2 * plain)
    assert torch.allclose(hm((x, 3.0)), 3 * plain)
    assert _same_state(before, hm.module)


def test_wrap_names_hook_points_by_module_path_and_caches_their_outputs():
    hm = mp.wrap(TwoBranch())
    assert hm.hook_names == ["a", "a.0", "a.1", "b"]
    out, cache = hm.run_with_cache(torch.randn(6, 4))
    assert {k: tuple(v.shape) for k, v in cache.items()} == {
        "a": (6, 8), "a.0": (6, 8), "a.1": (6, 8), "b": (6, 3)}
    assert torch.equal(cache["a.1"], torch.relu(cache["a.0"]))
    assert not hm.module._modules["a"]._forward_hooks  # hooks are removed after the call


def test_owner_and_hook_point_name_the_modules_behind_names(minilm):
    hm = mp.wrap(TwoBranch())
    assert hm.owner("a.0.weight") is hm.module.a[0] and hm.hook_point("b") is hm.module.b
    assert minilm.owner("blocks.0.attn.q.weight").weight.shape == (384, 384)
    with pytest.raises(KeyError, match="closest"):
        hm.owner("c.weight")


def test_output_hook_returns_that_activation():
    hm = mp.wrap(TwoBranch(), output="a.0")
    x = torch.randn(2, 4)
    assert torch.allclose(hm(x), hm.module.a[0](x))
    at_b = mp.wrap(hm, output="b")  # re-reading a HookedModel elsewhere shares its module
    assert at_b.module is hm.module and torch.allclose(at_b(x), hm.module.b(x))


def test_gradients_flow_through_substituted_tensors():
    hm = mp.wrap(TwoBranch())
    w = hm.params("b.weight")["b.weight"].clone().requires_grad_(True)
    hm.forward_with({"b.weight": w}, torch.randn(3, 4)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert hm.module.b.weight.grad is None


def test_load_tiny_bert_and_gpt2_from_local_directory(tmp_path):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=16)).eval()
    bert.save_pretrained(tmp_path / "bert")
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=2, n_head=4,
                                     n_positions=16)).eval()
    gpt.save_pretrained(tmp_path / "gpt2")
    x = torch.randint(0, 40, (2, 7))
    hb = mp.load_model(tmp_path / "bert")
    assert hb.is_bridge and "blocks.1.hook_out" in hb.hook_names
    assert torch.allclose(hb(x), bert(input_ids=x).last_hidden_state, atol=1e-5)
    hg = mp.load_model(str(tmp_path / "gpt2"))
    assert torch.allclose(hg(x), gpt(input_ids=x).logits, atol=1e-4)
    assert hb.tokenizer is None and hg.tokenizer is None  # the directories ship no tokenizer
    assert hg.vocab_size == 40
    causal, encoder = mp.models.default_reading(hg), mp.models.default_reading(hb)
    assert (causal.output, causal.pool) == ("blocks.1.hook_out", "last")
    assert (encoder.output, encoder.pool) == ("blocks.1.hook_out", "first")


def test_pooling_reads_the_last_real_token_on_either_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    pool = mp.models.pool_sequence
    assert pool(hidden, right, "last").flatten().tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [0.5, 5.5]
    assert pool(hidden, None, "first").flatten().tolist() == [0.0, 4.0]
    with pytest.raises(ValueError, match="pool=None for outputs that are not sequences"):
        pool(torch.zeros(2, 3), None, "last")


def test_a_wrapped_module_pools_its_sequence_output_by_the_attention_mask():
    class Echo(nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return input_ids.float().unsqueeze(-1)

    hm = mp.wrap(Echo(), pool="last")
    ids = torch.tensor([[5, 6, 0], [7, 8, 9]])
    out = hm({"input_ids": ids, "attention_mask": (ids > 0).long()})
    assert out.flatten().tolist() == [6.0, 9.0] and "pool='last'" in repr(hm)
    assert hm.with_module(Echo()).pool == "last"


def test_reinitialize_is_deterministic_fresh_and_leaves_input_untouched(minilm):
    before = _state(minilm.module)
    a = mp.reinitialize(minilm, seed=0)
    b = mp.reinitialize(minilm, seed=0)
    c = mp.reinitialize(minilm, seed=1)
    wa, wb, wc = a.params(), b.params(), c.params()
    orig = minilm.params()
    assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert not torch.equal(wa["blocks.0.attn.q.weight"], wc["blocks.0.attn.q.weight"])
    pretrained = [n for n in orig if n.startswith(("blocks", "embed", "pos_embed"))]
    assert all(not torch.equal(wa[n], orig[n]) for n in pretrained)
    assert _same_state(before, minilm.module)
    assert a.output == minilm.output and a.hook_names == minilm.hook_names


def test_reinitialize_plain_module_uses_reset_parameters_and_permutes_the_rest():
    class WithRawParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.scale = nn.Parameter(torch.arange(6.0))

        def forward(self, x):
            return self.fc(x) * self.scale[:3]

    model = WithRawParam()
    with pytest.warns(UserWarning, match="scale"):
        twin = mp.reinitialize(model, seed=3)
    assert not torch.equal(twin.module.fc.weight, model.fc.weight)
    assert sorted(twin.module.scale.tolist()) == list(range(6))
    assert not torch.equal(twin.module.scale, model.scale)


def test_scratch_factories_build_seeded_models():
    m1, m2 = mp.scratch.mlp([4, 16, 2], seed=5), mp.scratch.mlp([4, 16, 2], seed=5)
    assert m1.param_names() == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert torch.equal(m1.params()["fc1.weight"], m2.params()["fc1.weight"])
    c = mp.scratch.cnn(in_channels=1, channels=(4, 8), n_classes=3, image_size=16)
    assert c(torch.randn(2, 1, 16, 16)).shape == (2, 3)
    t = mp.scratch.transformer("bert", n_layers=2, d_model=32, n_heads=4, d_mlp=64)
    assert t.is_bridge and t.output == "blocks.1.hook_out"
    assert t(torch.randint(0, 64, (2, 5))).shape == (2, 5, 32)


def test_errors_name_the_problem_and_the_fix(minilm, tmp_path):
    with pytest.raises(ValueError, match="accepted model specs"):
        mp.load_model("no-such-model")
    with pytest.raises(TypeError, match="accepted model specs"):
        mp.load_model(42)
    with pytest.raises(ValueError, match="Closest names.*blocks.0.mlp"):
        minilm.param_names("blocks.0.mlp.fc_in.*")
    with pytest.raises(KeyError, match="closest"):
        minilm.run_with_cache({"input_ids": torch.tensor([[101, 102]])}, names=["blocks.0.hook_outt"])
    hm = mp.wrap(TwoBranch())
    with pytest.raises(ValueError, match="shape"):
        hm.forward_with({"b.weight": torch.zeros(2, 2)}, torch.randn(1, 4))
    with pytest.raises(KeyError, match="not a parameter"):
        hm.forward_with({"c.weight": torch.zeros(2, 2)}, torch.randn(1, 4))
    with pytest.raises(TypeError, match="nn.Module"):
        mp.wrap("not a module")


def test_evaluating_restores_training_modes():
    module = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    module.train()
    module[1].eval()
    hm = mp.wrap(module)
    with hm.evaluating():
        assert not any(m.training for m in module.modules())
    assert module.training and module[0].training and not module[1].training


def test_output_axis_names_the_weight_axis_of_output_units():
    from transformers.pytorch_utils import Conv1D

    from modprobe.models import output_axis

    cases = [(nn.Linear(3, 5), 5), (nn.Conv2d(2, 4, 3), 4), (nn.ConvTranspose2d(2, 4, 3), 4),
             (Conv1D(5, 3), 5), (nn.Embedding(7, 6), 6)]
    for module, n_out in cases:
        assert module.weight.shape[output_axis(module)] == n_out, type(module).__name__
