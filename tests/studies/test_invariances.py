"""Invariances around an optimum: known answers on quadratic units, the Hessian-vector
products against torch's double backward, bad input, and the command."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from convsight.analysis.image_basis import FourierBasis
from convsight.analysis.invariances import (
    HessianScale,
    SphereHessian,
    channel_response,
    invariances,
)
from convsight.analysis.measured_directions import rank_by_response, walk
from convsight.analysis.surrogate import ExactSphereHessian, softplus_surrogate
from convsight.cli import app
from convsight.errors import ConvsightError
from convsight.models import Model, ModelCard, load_model
from convsight.optvis.settings import settings_for
from convsight.studies import invariances as study
from tests.studies.views import check_views, nothing_written, same_files, small_model

SIDE = 16


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def gabor_pair(side: int = SIDE, theta: float = 0.4, freq: float = 0.2, sigma: float = 3.0):
    """Cosine and sine Gabors centred on the image (1 x side x side), zero mean, orthogonal."""
    c = (side - 1) / 2
    yy, xx = torch.meshgrid(
        torch.arange(side, dtype=torch.float64) - c,
        torch.arange(side, dtype=torch.float64) - c,
        indexing="ij",
    )
    u = xx * math.cos(theta) + yy * math.sin(theta)
    envelope = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    even = envelope * torch.cos(2 * math.pi * freq * u)
    even = even - envelope * (even.sum() / envelope.sum())  # no response to a flat image
    odd = envelope * torch.sin(2 * math.pi * freq * u)
    return even[None], odd[None]


@pytest.mark.parametrize(
    "scale", [HessianScale(), HessianScale(h=0.02, sigma=0.05, samples=4)], ids=["fd", "smooth"]
)
def test_complex_cell_is_invariant_to_phase(scale):
    even, odd = gabor_pair()

    def energy(pixels: torch.Tensor) -> torch.Tensor:  # a complex cell at the image centre
        return (pixels * even).flatten(1).sum(1) ** 2 + (pixels * odd).flatten(1).sum(1) ** 2

    x = 3 * even / even.norm()  # the optimum on the sphere of radius 3
    found = invariances(energy, x, k=3, scale=scale)
    tangent = odd - (odd * x).sum() / (x * x).sum() * x  # the phase shift: the sine Gabor, in x⊥
    assert abs(cosine(found.invariant[0], tangent)) > 0.9  # either sign
    assert abs(cosine(found.selective[0], tangent)) < 0.5
    assert found.invariant_values[0] > found.selective_values[0]
    assert found.converged == 6 and found.reliable  # a quadratic: its products are exact
    if scale.sigma == 0:  # x is a critical point on the sphere (smoothed: nearly)
        assert found.tangent_gradient_norm < 1e-6 * found.radius
    for v in (*found.invariant, *found.selective):  # unit tangent directions
        assert abs(float(v.norm()) - 1) < 1e-6 and abs(cosine(v, x)) < 1e-6


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@pytest.mark.slow
def test_translation_invariant_unit_through_a_model():
    """Mean over positions of a squared circular convolution: its optimum is a plane wave at
    the kernel's strongest frequency; its invariance, the optimum's translation tangent."""
    torch.manual_seed(9)  # a kernel whose strongest frequency is well ahead of the next
    conv = nn.Conv2d(1, 1, 5, padding=2, padding_mode="circular", bias=False)
    model = Model.from_module(nn.Sequential(conv, Square()), input_size=SIDE, channels=1)
    f = channel_response(model, "1", 0)
    kernel = torch.zeros(SIDE, SIDE)
    kernel[:5, :5] = conv.weight[0, 0].detach()
    power = torch.fft.fft2(kernel).abs() ** 2
    top = torch.topk(power.flatten(), 3)
    first, second, third = top.values.tolist()
    assert second == pytest.approx(first, rel=1e-5)  # k and -k
    assert third < 0.9 * first  # and no other frequency ties with them
    ky, kx = divmod(int(top.indices[0]), SIDE)
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    x = torch.cos(2 * math.pi * (kx * xx + ky * yy) / SIDE + 0.3)[None]
    frequencies = torch.fft.fftfreq(SIDE)
    shift_x = torch.fft.ifft2(torch.fft.fft2(x) * (-2j * math.pi * frequencies)).real
    shift_y = torch.fft.ifft2(torch.fft.fft2(x) * (-2j * math.pi * frequencies[:, None])).real
    tangent = shift_x if shift_x.norm() > shift_y.norm() else shift_y  # d/du x(p - u)
    found = invariances(f, x, k=2)
    assert abs(cosine(found.invariant[0], tangent)) > 0.9 and found.reliable
    assert abs(cosine(found.selective[0], tangent)) < 0.5
    assert abs(float(found.invariant_values[0])) < 1e-3 * abs(float(found.selective_values[0]))


def smooth_unit():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 1, 3), nn.Softplus()).double()

    def f(pixels: torch.Tensor) -> torch.Tensor:
        return net(pixels).flatten(1).mean(1) + 0.1 * pixels.pow(3).flatten(1).sum(1)

    return f


@pytest.mark.slow
def test_finite_difference_products_match_double_backward():
    f = smooth_unit()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 6, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 6, 6, generator=gen, dtype=torch.float64)
    exact = torch.autograd.functional.hvp(lambda p: f(p[None])[0], x, v)[1]
    fd = SphereHessian(f, x, HessianScale(h=1e-4)).hessian_product(v)
    assert torch.allclose(fd, exact, rtol=1e-5, atol=1e-7 * float(exact.norm()))
    smoothed = SphereHessian(f, x, HessianScale(h=1e-4, sigma=0.1, samples=3), seed=5)
    noisy = [x + n for n in smoothed.noise]  # the smoothed product: the mean at the draws
    expected = torch.stack(
        [torch.autograd.functional.hvp(lambda p: f(p[None])[0], p, v)[1] for p in noisy]
    ).mean(0)
    assert torch.allclose(smoothed.hessian_product(v), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.slow
def test_eigenvalues_match_the_dense_riemannian_hessian():
    f = smooth_unit()
    x = torch.rand(1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    n = x.numel()
    hessian = torch.autograd.functional.hessian(lambda p: f(p.reshape(1, *x.shape))[0], x.flatten())
    grad = torch.autograd.functional.jacobian(lambda p: f(p.reshape(1, *x.shape))[0], x.flatten())
    xf = x.flatten()
    projector = torch.eye(n, dtype=torch.float64) - torch.outer(xf, xf) / (xf @ xf)
    riemannian = projector @ (hessian - (grad @ xf) / (xf @ xf) * torch.eye(n)) @ projector
    values, vectors = torch.linalg.eigh(riemannian)
    tangent = (vectors.T @ xf).abs() < 1e-8  # drop the radial direction's spurious 0
    values = values[tangent]
    found = invariances(f, x, k=3, scale=HessianScale(h=1e-5), tol=1e-10)
    assert torch.allclose(found.invariant_values, values.flip(0)[:3], rtol=1e-5, atol=1e-7)
    assert torch.allclose(found.selective_values, values[:3], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_piecewise_linear_unit_is_flagged_unreliable():
    """Differences of gradients of a ReLU unit count kinks: not a linear map, and said so."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(8, 1, 5, 5, generator=gen), torch.randn(1, 8, 3, 3, generator=gen)

    def relu_unit(p: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(F.relu(F.conv2d(p, w1)), w2)).flatten(1).mean(1)

    found = invariances(relu_unit, torch.rand(1, SIDE, SIDE, generator=gen), k=2)
    assert found.check is not None and found.check.linearity > 0.1 and not found.reliable
    assert found.summary()["check"]["reliable"] is False


def _relu_model() -> Model:
    torch.manual_seed(3)
    module = nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3), nn.ReLU()
    )
    card = ModelCard("relu", "test:relu", (SIDE, SIDE), 1, (0.0,), (1.0,))
    return Model(module.eval(), card)


@pytest.mark.slow
def test_softplus_surrogate_is_close_to_the_network_and_exactly_linear():
    model = _relu_model()
    surrogate, replaced = softplus_surrogate(model, beta=50.0)
    assert replaced == 2 and type(model.module[1]) is nn.ReLU  # the model itself is untouched
    f = channel_response(model, "3", 1)
    g = channel_response(surrogate, "3", 1)
    x = torch.rand(2, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # softplus(bx)/b - relu(x) is in (0, log(2)/b] at every unit
        gap = g(x) - f(x)
    assert (gap.abs() < 2 * math.log(2) / 50.0).all()
    # products are double backward of the surrogate, checked against torch.autograd.functional
    hessian = ExactSphereHessian(g, x[0], HessianScale(softplus=50.0))
    v = torch.randn(1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    exact = torch.autograd.functional.hvp(lambda p: g(p[None])[0], x[0], v)[1]
    torch.testing.assert_close(hessian.hessian_product(v), exact)
    found = invariances(g, x[0], k=2, scale=HessianScale(softplus=50.0))
    assert found.check.linearity < 1e-4 and found.check.symmetry < 1e-4 and found.reliable
    assert found.summary()["scale"]["softplus_beta"] == 50.0


def test_softplus_needs_a_relu_and_not_smoothing_too():
    no_relu = Model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), load_model("mnist-cnn").card)
    with pytest.raises(ConvsightError, match="no nn.ReLU"):
        softplus_surrogate(no_relu, 10.0)
    with pytest.raises(ConvsightError, match="not with --smooth"):
        HessianScale(sigma=0.1, softplus=10.0).check()


def test_ascent_on_the_sphere_finds_the_optimum_of_a_linear_unit():
    """f(x) = a·x is largest on the sphere at r a/|a|, where the tangent gradient vanishes."""
    gen = torch.Generator().manual_seed(0)
    a, x = torch.randn(2, 6, 6, generator=gen), torch.rand(2, 6, 6, generator=gen)

    def f(p: torch.Tensor) -> torch.Tensor:
        return (p * a).flatten(1).sum(1)

    moved, record = study.ascend_on_sphere(f, x, steps=200)
    assert float(moved.norm()) == pytest.approx(float(x.norm()), rel=1e-5)  # on the sphere
    assert cosine(moved, a) > 0.9999
    assert record["tangent_gradient_norm_after"] < 1e-2 * record["tangent_gradient_norm_before"]
    assert record["response_after"] == pytest.approx(float(a.norm() * x.norm()), rel=1e-4)
    unmoved, none = study.ascend_on_sphere(f, x, steps=0)
    assert torch.equal(unmoved, x) and none["accepted"] == 0


@pytest.mark.slow
def test_directions_on_the_level_set_of_a_point_that_is_not_stationary():
    """A quadratic unit at a point where its tangent gradient is not 0: the directions are
    ⊥ x and ⊥ P g, the eigenvalues are those of the Riemannian Hessian on that subspace
    (formed densely here), and along each direction the response has no first-order change
    and the eigenvalue as its second-order one."""
    gen = torch.Generator().manual_seed(3)
    shape, n = (2, 3, 3), 18
    m = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a, b = (m + m.T) / 2, torch.randn(n, generator=gen, dtype=torch.float64)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)

    def f(p: torch.Tensor) -> torch.Tensor:
        flat = p.flatten(1)
        return 0.5 * ((flat @ a) * flat).sum(1) + flat @ b

    found = invariances(f, x, k=2, tol=1e-10, level_set=True)
    g, r2 = a @ x.flatten() + b, float((x * x).sum())
    tangent = g - (g @ x.flatten()) / r2 * x.flatten()
    assert found.normal is not None and found.tangent_gradient_norm > 0.1
    assert abs(cosine(found.normal, tangent)) > 1 - 1e-9
    basis, _ = torch.linalg.qr(torch.cat([x.reshape(n, 1), tangent[:, None], torch.eye(n)], 1))
    rest = basis[:, 2:n]  # orthonormal, ⊥ x and ⊥ P g
    exact = torch.linalg.eigvalsh(rest.T @ (a - (g @ x.flatten()) / r2 * torch.eye(n)) @ rest)
    assert torch.allclose(found.invariant_values, exact.flip(0)[:2], rtol=1e-6)
    assert torch.allclose(found.selective_values, exact[:2], rtol=1e-6)
    t = torch.tensor([-1e-3, 0.0, 1e-3], dtype=torch.float64)
    for v, value in zip(found.invariant, found.invariant_values.tolist(), strict=True):
        assert abs(cosine(v, x)) < 1e-9 and abs(cosine(v, tangent)) < 1e-9
        lo, mid, hi = f(study.sphere_path(x, v, t)).tolist()
        assert abs(hi - lo) / 2e-3 < 1e-6 * found.tangent_gradient_norm * found.radius
        assert (hi + lo - 2 * mid) / 1e-6 == pytest.approx(r2 * value, rel=1e-4)
    random = study.random_tangents(x, 3, 0, found.normal)  # the baseline, drawn alike
    assert all(abs(cosine(v, tangent)) < 1e-9 and abs(cosine(v, x)) < 1e-9 for v in random)
    plain = invariances(f, x, k=2, tol=1e-10)  # the whole tangent space
    assert plain.normal is None and max(abs(cosine(v, tangent)) for v in plain.invariant) > 1e-3


def test_sphere_path_stays_on_the_sphere():
    x = torch.rand(3, 4, 4)
    v = torch.randn(3, 4, 4)
    v = v - (v * x).sum() / (x * x).sum() * x
    path = study.sphere_path(x, v, torch.linspace(0, math.pi / 2, 5))
    assert torch.allclose(path[0], x)
    assert torch.allclose(path.flatten(1).norm(dim=1), x.norm().expand(5), rtol=1e-5)
    assert torch.allclose(path[-1], x.norm() * v / v.norm(), atol=1e-6)


def analyse(model, out, layer=None, channel=None, target=None, k=4, h=0.01, flags=None, **more):
    """:func:`study.write_invariances` as its JSON, the request made of these fields and the
    robust preset with ``flags``."""
    unit = study.Unit(layer, channel, target)
    settings = settings_for("robust", unit.kind, **(flags or {}))
    request = study.InvariancesRequest(
        unit,
        settings,
        frozenset(flags or {}),
        k=k,
        scale=HessianScale(h=h),
        out=out,
        basis="pixel",
        **more,
    )
    return study.write_invariances(model, request).to_json()


def test_bad_input_is_one_sentence_before_any_work(tmp_path, monkeypatch):
    calls = []
    x = torch.rand(1, 4, 4)
    with pytest.raises(ConvsightError, match="at most 13"):
        invariances(lambda p: calls.append(1) or p.sum(), x, k=15)
    with pytest.raises(ConvsightError, match="--h must be"):
        invariances(lambda p: calls.append(1) or p.sum(), x, k=2, scale=HessianScale(h=0))
    assert not calls

    def no_render(*args, **kwargs):
        raise AssertionError("rendered before the input was checked")

    monkeypatch.setattr(study, "render_channels", no_render)
    model = load_model("mnist-cnn")
    out = tmp_path / "out"
    cases = [
        ({"layer": "features.9", "channel": 0}, "unknown layer 'features.9'"),
        ({"layer": "features.3", "channel": 64}, "channel 64 is out of range"),
        ({"layer": "features.3", "channel": 0, "k": 783}, "at most 781"),
        ({"layer": "features.3", "channel": 0, "h": 0.0}, "--h must be"),
        ({"layer": "features.3", "channel": 0, "h": -1.0}, "--h must be"),
        ({"layer": "features.3"}, "--channel"),
        ({"layer": "features.3", "channel": 0, "target": "3"}, "not both"),
    ]
    for given, fragment in cases:
        with pytest.raises(ConvsightError, match=fragment.replace("-", r"\-")) as info:
            analyse(model, out=out, **given)
        assert "\n" not in str(info.value)
    assert not out.exists()


runner = CliRunner()


@pytest.mark.slow
def test_command_writes_the_outputs(tmp_path):
    out = tmp_path / "inv"
    args = ["invariances", "mnist-cnn", "--layer", "features.3", "--channel", "5", "--k", "2"]
    args += ["--steps", "4", "--size", "16", "--frames", "3", "--out", str(out), "--quiet"]
    args += ["--basis", "pixel"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["invariant_eigenvalues"]) == 2 and len(summary["directions"]) == 4
    assert summary["settings"]["h"] == 0.01 and summary["settings"]["k"] == 2
    assert summary["invariant_eigenvalues"][0] >= summary["selective_eigenvalues"][0]
    assert set(summary["check"]) >= {"linearity_error", "eigen_residuals", "reliable"}
    assert len(summary["random_directions"]["response_on_sphere"]) == 2
    if not summary["check"]["reliable"]:  # a ReLU network: the warning is on stderr
        assert "warning:" in result.stderr
    for name in ("optimum.png", "spectrum.png", "invariances.png", "invariances.npz"):
        assert (out / name).is_file()
    for stem in ("invariant_01", "invariant_02", "selective_01", "selective_02"):
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.gif").is_file()
    assert len(summary["directions"][0]["response_on_sphere"]) == 3


@pytest.mark.slow
def test_command_with_the_softplus_surrogate_is_reliable(tmp_path):
    out = tmp_path / "inv"
    args = ["invariances", "mnist-cnn", "--layer", "features.3", "--channel", "5", "--k", "2"]
    args += ["--softplus", "20", "--steps", "8", "--size", "16", "--frames", "3", "--ascend", "20"]
    args += ["--basis", "pixel"]
    result = runner.invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["method"].startswith("exact (double backward)")
    assert summary["surrogate"]["relus_replaced"] == 3
    assert summary["check"]["reliable"] and "warning:" not in result.stderr
    assert summary["check"]["linearity_error"] < 1e-3
    assert summary["settings"]["ascend"] == 20
    ascent = summary["ascent"]  # up the sphere from the render: |P g| falls, the response rises
    assert ascent["accepted"] > 0 and ascent["response_after"] > ascent["response_before"]
    assert ascent["tangent_gradient_norm_after"] < ascent["tangent_gradient_norm_before"]


@pytest.mark.slow
def test_class_unit(tmp_path):
    model = load_model("mnist-cnn")
    flags = {"steps": 3, "class_objective": "logit"}  # rendered on the score itself
    summary = analyse(
        model, target="3", k=1, frames=2, flags=flags, out=tmp_path, show_progress=False
    )
    assert summary["unit"]["class"] == 3 and summary["objective"].startswith("the class score")
    ascent = summary["ascent"]  # by default the analysis is at the render itself
    assert ascent["steps"] == 0 and ascent["accepted"] == 0
    assert summary["response"] == pytest.approx(summary["render"]["value"], rel=1e-4)
    assert summary["tangent_gradient_norm"] > 0  # a render is not stationary on its sphere
    assert summary["directions_taken"].startswith("on the level set")
    assert (tmp_path / "invariant_01.gif").is_file()


def test_command_bad_channel_exit_2(tmp_path):
    out = tmp_path / "inv"
    args = ["invariances", "mnist-cnn", "--layer", "features.3", "--channel", "64"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "channel 64 is out of range" in result.stderr and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_result_holds_the_arrays_and_its_json_is_summary_json(tmp_path):
    model = load_model("mnist-cnn")
    settings = settings_for("robust", "channel", steps=3, size=16)
    request = study.InvariancesRequest(
        study.Unit("features.3", 1),
        settings,
        k=1,
        frames=2,
        out=tmp_path,
        show_progress=False,
        basis="pixel",
    )
    result = study.write_invariances(model, request)
    assert isinstance(result, study.InvariancesResult)
    assert result.found.invariant.shape == (1, 1, 16, 16)
    assert result.paths["invariant"]["images"].shape == (1, 2, 1, 16, 16)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == json.loads(json.dumps(result.to_json()))
    assert {p.name for p in result.files} >= {"summary.json", "invariances.npz", "optimum.png"}
    with pytest.raises(ConvsightError, match="--ascend"):
        study.InvariancesRequest(study.Unit("features.3", 1), settings, ascend=-1)


@pytest.mark.slow
def test_result_shows_itself_and_saves_what_a_folder_gets(tmp_path, monkeypatch):
    model = small_model()
    monkeypatch.chdir(tmp_path)
    settings = settings_for("robust", "channel", steps=3)
    request = study.InvariancesRequest(
        study.Unit("2", 1), settings, k=1, frames=3, angle=30, show_progress=False, basis="pixel"
    )
    result = study.write_invariances(model, request)
    assert result.files == [] and nothing_written(tmp_path)  # no folder: nothing written
    captions = ["optimum: ", "invariant 1, 30°: ", "selective 1, 30°: ", "2 channel 1"]
    check_views(result, 3, captions)
    assert dict(result.facts())["settings"] == "k 1, 3 frames to 30°, ascend 0"
    saved = result.save(tmp_path / "later")
    direct = study.write_invariances(model, replace(request, out=tmp_path / "direct"))
    same_files(saved, direct.files)
    assert saved[-1].name == "summary.json" and len(saved) == 9


@pytest.mark.parametrize(
    "scale", [HessianScale(), HessianScale(h=0.02, sigma=0.05, samples=4)], ids=["fd", "smooth"]
)
def test_complex_cell_is_invariant_to_phase_in_the_fourier_basis(scale):
    """The same known answer with the Hessian in the render's Fourier image basis: a complex
    cell on the basis's coordinates z of the image (the unit reads z = the basis's inverse of
    the pixels), its optimum given as pixels; the invariant direction is the phase shift in z,
    and walked on the sphere in z and drawn in pixels it keeps the response."""
    basis = FourierBasis()
    even, odd = gabor_pair()

    def energy(pixels: torch.Tensor) -> torch.Tensor:
        z = basis.coordinates(pixels)
        return (z * even).flatten(1).sum(1) ** 2 + (z * odd).flatten(1).sum(1) ** 2

    z = 3 * even / even.norm()
    pixels = basis.pixels(z)
    assert 0.05 < float(pixels.min()) and float(pixels.max()) < 0.95  # nothing clipped
    found = invariances(energy, pixels, k=3, scale=scale, basis=basis)
    assert found.basis.name == "fourier" and torch.allclose(found.point, z, atol=1e-8)
    tangent = odd - (odd * z).sum() / (z * z).sum() * z
    assert abs(cosine(found.invariant[0], tangent)) > 0.9
    assert abs(cosine(found.selective[0], tangent)) < 0.5
    assert found.converged == 6 and found.reliable
    angles = torch.linspace(0, 30, 4).tolist()
    invariant, selective = rank_by_response(walk(energy, found, angles, torch.device("cpu")), 3)
    assert invariant[0].eigen_end == "largest" and invariant[0].eigen_rank == 1
    assert min(invariant[0].kept()) > 0.99 and selective[0].kept()[-1] < 0.9
    assert torch.allclose(invariant[0].images[0], pixels, atol=1e-6)  # drawn in pixels


@pytest.mark.slow
def test_fourier_basis_is_the_default_and_labels_follow_the_measured_response(tmp_path):
    model = small_model()
    settings = settings_for("robust", "channel", steps=3)
    request = study.InvariancesRequest(
        study.Unit("2", 1), settings, k=2, frames=4, angle=20, out=tmp_path, show_progress=False
    )
    assert request.basis == "fourier"
    result = study.write_invariances(model, request)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["basis"]["name"] == "fourier" and summary["settings"]["basis"] == "fourier"
    rows = summary["directions"]
    assert [(r["kind"], r["rank"]) for r in rows] == [
        ("invariant", 1), ("invariant", 2), ("selective", 1), ("selective", 2)
    ]  # fmt: skip
    means = [r["mean_response"] for r in rows]  # the measured order, whatever the eigenvalues
    assert means[0] >= means[1] >= means[3] >= means[2]
    eigenvalues = summary["invariant_eigenvalues"] + summary["selective_eigenvalues"]
    assert sorted(r["eigenvalue"] for r in rows) == sorted(eigenvalues)
    for row in rows:
        assert row["eigen_end"] in ("largest", "smallest") and row["label"]
        start, kept = row["response_on_sphere"][0], row["response_kept"]
        assert kept is None if start <= 0 else kept[0] == pytest.approx(1.0)
        assert row["response_clipped"] == row["response_on_sphere"]  # sigmoid: in [0, 1]
        assert float(torch.tensor(row["response_on_sphere"]).mean()) == pytest.approx(
            (row["mean_response"] * 3 + row["response_on_sphere"][0]) / 4, rel=1e-5
        )
    frames = result.paths["invariant"]["images"]
    assert (
        frames.shape == (2, 4, 3, 16, 16) and 0 <= float(frames.min()) <= float(frames.max()) <= 1
    )
    assert torch.allclose(frames[:, 0], result.found.image.float().expand(2, -1, -1, -1), atol=1e-6)
    assert dict(result.facts())["basis"] == "fourier"
    check_views(result, 5, ["invariant 1, 20°: ", rows[0]["label"]])


def test_command_unknown_basis_exit_2(tmp_path):
    out = tmp_path / "inv"
    args = ["invariances", "mnist-cnn", "--layer", "features.3", "--channel", "1"]
    result = runner.invoke(app, [*args, "--basis", "nonsense", "--out", str(out)])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "--basis must be one of pixel, fourier, not 'nonsense'" in message
    assert message.count("\n") == 0 and "Traceback" not in result.output
    assert not out.exists()
