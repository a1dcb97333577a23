"""Shared fixtures: the offline data/weights folder and small models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from convsight.models import Model, ModelCard


@pytest.fixture(scope="session")
def shared() -> Path:
    """The folder of real data and weights (../shared), named by $CONVSIGHT_SHARED.

    The suite tests on real data and weights: without the folder these tests fail, not skip.
    """
    env = os.environ.get("CONVSIGHT_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    if not (path / "models").is_dir():
        pytest.fail(
            f"no shared data/weights folder at {path}: run `make test SHARED=DIR` "
            "or set CONVSIGHT_SHARED"
        )
    return path


@pytest.fixture(scope="session")
def mnist_dir(shared: Path) -> Path:
    return shared / "data" / "mnist"


@pytest.fixture(scope="session")
def samples(shared: Path) -> list[Path]:
    return sorted((shared / "data" / "imagenet-samples").glob("*.JPEG"))


@pytest.fixture(scope="session")
def mobilenet_v2(shared: Path) -> Model:
    from convsight.models import load_model

    return load_model("mobilenet_v2", weights=shared / "models" / "mobilenet_v2_imagenet.pt")


class TinyNet(nn.Module):
    """A small RGB classifier for fast tests: two conv blocks, a linear head."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture
def tiny() -> Model:
    torch.manual_seed(0)
    card = ModelCard(
        name="tiny",
        arch="test:tiny",
        input_size=(32, 32),
        channels=3,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        labels=["cat", "dog", "fish", "bird"],
    )
    return Model(TinyNet(), card)


def hook_count(module: nn.Module) -> int:
    """Forward, pre-forward and backward hooks still registered anywhere in ``module``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    path = os.environ.get("CONVSIGHT_CHROMIUM", "/usr/bin/chromium")
    if not os.path.exists(path):
        pytest.fail(f"no Chromium at {path}: `make test` installs Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def open_page(browser, url):
    """Load ``url``; return the page, its console errors and any dialogs that opened."""
    page = browser.new_page()
    errors, dialogs = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, errors, dialogs


def assert_images_loaded(page):
    """Every <img> decodes to a real picture, lazy ones included (scrolled into view first)."""
    images = page.query_selector_all("img")
    assert images, "no images on the page"
    for image in images:
        image.scroll_into_view_if_needed()
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15_000)
    sizes = page.eval_on_selector_all("img", "els => els.map(e => [e.src, e.naturalWidth])")
    broken = [src for src, width in sizes if width == 0]
    assert not broken, broken


def two_channel_net(conv: tuple[float, float]) -> nn.Sequential:
    """1 x 1 x 2 image -> 1x1 conv to 2 channels (weights ``conv``, no bias) -> ReLU ->
    flatten -> linear to 2 outputs with set weights: a net whose channel numbers a test
    computes by hand."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(conv).view(2, 1, 1, 1))
        # flattened (channel, position): c0p0, c0p1, c1p0, c1p1
        net[3].weight.copy_(torch.tensor([[1.0, 3.0, -4.0, 2.0], [0.0, 0.0, 0.0, 1.0]]))
    return net
