"""Random, differentiable image transformations that model printing a picture and photographing it.

Kurakin, Goodfellow & Bengio 2016 ("Adversarial examples in the physical world", arXiv:1607.02533) print
adversarial images, photograph them with a phone and ask how many stay adversarial (the destruction rate);
they also apply blur, noise, JPEG compression, brightness and contrast changes artificially. Athalye, Engstrom,
Ilyas & Kwok 2018 ("Synthesizing robust adversarial examples", ICML; expectation over transformation, EOT)
optimise the expected loss over a distribution of such transformations. This module is that distribution.

Each entry of `TRANSFORMS` is a factory of keyword hyper-parameters returning

    transform(x, key) -> x'

on float32 NHWC images in [0, 1]; the output has the same shape and is clipped to [0, 1]. Every image of the
batch draws its own parameters from `key` (so the same key gives the same output), everything is jittable,
and the output is differentiable in x (rounding steps pass the gradient straight through).

- `affine(rotation, scale, translation, fill)`: rotation in degrees drawn from [-rotation, rotation], zoom
  drawn from `scale`, shift in pixels from [-translation, translation] per axis; bilinear resampling
  (written here: four gathers and their weights), pixels from outside the image are `fill`;
- `gaussian_blur(sigma)`: a separable Gaussian kernel, sigma drawn from the range (edge padding);
- `brightness_contrast(brightness, contrast)`: x * c + b, c drawn from `contrast`, b from [-brightness,
  brightness] (Kurakin et al.'s "contrast and brightness");
- `gaussian_noise(std)`: x + std * N(0, 1), std drawn from the range;
- `quantize(bits)`: rounding to 2**bits - 1 levels (a camera's 8-bit output), straight-through gradient;
- `jpeg(quality, rounding)`: JPEG-like compression: 8x8 blocks, orthonormal DCT-II, the IJG quantisation
  tables (Annex K of ITU-T T.81) scaled for a quality drawn from the range, rounding, inverse DCT; YCbCr for
  3-channel images; rounding "straight_through" (identity gradient) or "smooth" (round(z) + (z - round(z))**3,
  Shin & Song 2017); no chroma subsampling, no entropy coding (lossless, so it changes nothing);
- `identity()`: no change.

A range is a number (that value every time) or a pair [low, high]. `compose(*transforms)` applies several in
order; `from_spec(spec)` builds one from a config: a registry name, names joined by "+" ("affine+blur"), a
mapping {name: {keyword: value} or null} (applied in order), or a list of names and such mappings. The same
spec gives the same function object, so jitted attacks that take it as a static argument compile once.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bench.errors import BenchError

Transform = Callable[[jax.Array, jax.Array], jax.Array]


def _pair(value, name: str, *, low: float | None = None, high: float | None = None) -> tuple[float, float]:
    """A range: a number v is (v, v); a pair is (low, high) with low <= high, both within [low, high] bounds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise BenchError(f"{name} must be a number or a pair [low, high], got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise BenchError(f"{name} must be finite with low <= high, got [{lo:g}, {hi:g}]")
    if (low is not None and lo < low) or (high is not None and hi > high):
        raise BenchError(f"{name} must lie in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got [{lo:g}, {hi:g}]")
    return lo, hi


def _nonnegative(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BenchError(f"{name} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise BenchError(f"{name} must be a finite number >= 0, got {value:g}")
    return value


def _uniform(key, n: int, lo: float, hi: float) -> jax.Array:
    """n draws from U[lo, hi] (exactly lo when the range is a point)."""
    if lo == hi:
        return jnp.full((n,), lo, jnp.float32)
    return jax.random.uniform(key, (n,), jnp.float32, lo, hi)


def _rows(v: jax.Array) -> jax.Array:
    return v[:, None, None, None]


def _check_images(x) -> None:
    if x.ndim != 4:
        raise BenchError(f"transforms take NHWC image batches, got an array of shape {x.shape}")


def _straight_through(z: jax.Array, rounded: jax.Array) -> jax.Array:
    """`rounded` in the forward pass, the identity's gradient in the backward pass."""
    return z + jax.lax.stop_gradient(rounded - z)


# ---------------------------------------------------------------------------------------------- the transforms

def identity() -> Transform:
    """No change (a control: nothing is destroyed)."""

    def transform(x, key):
        _check_images(x)
        return jnp.clip(x, 0.0, 1.0)

    return transform


def _bilinear(image: jax.Array, ys: jax.Array, xs: jax.Array, fill: float) -> jax.Array:
    """Sample one HWC image at real coordinates (ys, xs) of shape (H', W'); outside the image reads `fill`."""
    h, w = image.shape[0], image.shape[1]
    y0, x0 = jnp.floor(ys), jnp.floor(xs)
    wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

    def read(yi, xi):
        inside = ((yi >= 0) & (yi < h) & (xi >= 0) & (xi < w))[..., None]
        value = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
        return jnp.where(inside, value, jnp.asarray(fill, image.dtype))

    top = read(y0, x0) * (1 - wx) + read(y0, x0 + 1) * wx
    bottom = read(y0 + 1, x0) * (1 - wx) + read(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def affine(*, rotation: float = 10.0, scale=(0.9, 1.1), translation: float = 2.0, fill: float = 0.0) -> Transform:
    """Random rotation (degrees, uniform in [-rotation, rotation]), zoom (uniform in `scale`) and shift (pixels,
    uniform in [-translation, translation] per axis) about the image centre, resampled bilinearly; pixels that
    come from outside the image are `fill` (0: MNIST's black background)."""
    rotation = _nonnegative(rotation, "affine rotation")
    s_lo, s_hi = _pair(scale, "affine scale", low=1e-3)
    translation = _nonnegative(translation, "affine translation")
    fill = float(fill)
    if not 0.0 <= fill <= 1.0:
        raise BenchError(f"affine fill must be a pixel value in [0, 1], got {fill:g}")

    def transform(x, key):
        _check_images(x)
        n, h, w, _ = x.shape
        k_rot, k_scale, k_ty, k_tx = jax.random.split(key, 4)
        theta = jnp.deg2rad(_uniform(k_rot, n, -rotation, rotation))
        zoom = _uniform(k_scale, n, s_lo, s_hi)
        ty, tx = _uniform(k_ty, n, -translation, translation), _uniform(k_tx, n, -translation, translation)
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        gy, gx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")

        def one(image, t, z, dy, dx):
            # output pixel p comes from source point R(-t) (p - c - shift) / zoom + c
            py, px = gy - cy - dy, gx - cx - dx
            cos, sin = jnp.cos(t), jnp.sin(t)
            sy = (cos * py - sin * px) / z + cy
            sx = (sin * py + cos * px) / z + cx
            return _bilinear(image, sy, sx, fill)

        return jnp.clip(jax.vmap(one)(x, theta, zoom, ty, tx), 0.0, 1.0)

    return transform


def gaussian_blur(*, sigma=(0.0, 1.0)) -> Transform:
    """A Gaussian blur of standard deviation (pixels) drawn per image from `sigma`; separable, edge padding,
    radius ceil(3 * max sigma)."""
    lo, hi = _pair(sigma, "blur sigma", low=0.0, high=10.0)
    radius = max(1, math.ceil(3 * hi))
    offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)

    def transform(x, key):
        _check_images(x)
        n, h, w, _ = x.shape
        s = jnp.maximum(_uniform(key, n, lo, hi), 1e-3)  # sigma 0: all weight on the centre tap
        weights = jnp.exp(-offsets[None, :] ** 2 / (2 * s[:, None] ** 2))
        weights = weights / weights.sum(axis=1, keepdims=True)  # (n, 2r+1)
        padded = jnp.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
        rows = sum(_rows(weights[:, k]) * padded[:, k:k + h, :, :] for k in range(2 * radius + 1))
        out = sum(_rows(weights[:, k]) * rows[:, :, k:k + w, :] for k in range(2 * radius + 1))
        return jnp.clip(out, 0.0, 1.0)

    return transform


def brightness_contrast(*, brightness: float = 0.1, contrast=(0.8, 1.2)) -> Transform:
    """x * c + b with the contrast c drawn from `contrast` and the brightness b from [-brightness, brightness]."""
    brightness = _nonnegative(brightness, "brightness")
    c_lo, c_hi = _pair(contrast, "contrast", low=0.0)

    def transform(x, key):
        _check_images(x)
        n = x.shape[0]
        k_b, k_c = jax.random.split(key)
        b, c = _uniform(k_b, n, -brightness, brightness), _uniform(k_c, n, c_lo, c_hi)
        return jnp.clip(x * _rows(c) + _rows(b), 0.0, 1.0)

    return transform


def gaussian_noise(*, std=(0.0, 0.05)) -> Transform:
    """Additive Gaussian noise (sensor noise) of standard deviation drawn per image from `std`."""
    lo, hi = _pair(std, "noise std", low=0.0)

    def transform(x, key):
        _check_images(x)
        k_std, k_noise = jax.random.split(key)
        s = _uniform(k_std, x.shape[0], lo, hi)
        return jnp.clip(x + _rows(s) * jax.random.normal(k_noise, x.shape, x.dtype), 0.0, 1.0)

    return transform


def quantize(*, bits: int = 8) -> Transform:
    """Rounding to 2**bits - 1 levels; the gradient passes straight through (Bengio et al. 2013)."""
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= int(bits) <= 16:
        raise BenchError(f"quantize bits must be an integer in [1, 16], got {bits!r}")
    levels = float(2 ** int(bits) - 1)

    def transform(x, key):
        _check_images(x)
        x = jnp.clip(x, 0.0, 1.0)
        return jnp.clip(_straight_through(x, jnp.round(x * levels) / levels), 0.0, 1.0)

    return transform


# ITU-T T.81 Annex K: the luminance and chrominance quantisation tables (quality 50).
_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], np.float32)
_CHROMA = np.full((8, 8), 99, np.float32)
_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _dct_matrix(size: int = 8) -> np.ndarray:
    """The orthonormal DCT-II matrix D: coefficients = D @ block @ D.T, block = D.T @ coefficients @ D."""
    k, i = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    d = np.sqrt(2.0 / size) * np.cos(np.pi * (2 * i + 1) * k / (2 * size))
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


_DCT = _dct_matrix()
_RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
                         np.float32)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR).astype(np.float32)
ROUNDINGS = ("straight_through", "smooth")


def jpeg(*, quality=(50.0, 90.0), rounding: str = "straight_through") -> Transform:
    """JPEG-like compression at a quality (1..100, IJG scaling of the Annex K tables) drawn per image.

    Pixels (x255, minus 128) are cut into 8x8 blocks (edge padded to a multiple of 8), each block is
    transformed by the 2-D DCT, divided by the quantisation table, rounded, multiplied back and inverse
    transformed. Three-channel images are coded in YCbCr (luminance table for Y, chrominance for Cb and Cr);
    any other channel count is coded channel by channel with the luminance table.
    """
    q_lo, q_hi = _pair(quality, "jpeg quality", low=1.0, high=100.0)
    if rounding not in ROUNDINGS:
        raise BenchError(f"unknown jpeg rounding '{rounding}'; use one of {list(ROUNDINGS)}")
    dct = jnp.asarray(_DCT)

    def round_(z):
        r = jnp.round(z)
        if rounding == "smooth":
            return r + (z - r) ** 3
        return _straight_through(z, r)

    def transform(x, key):
        _check_images(x)
        n, h, w, c = x.shape
        quality = _uniform(key, n, q_lo, q_hi)
        scale = jnp.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)  # IJG's quality scaling
        bases = np.stack([_LUMA] + [_CHROMA] * 2 if c == 3 else [_LUMA] * c)      # (c, 8, 8)
        tables = jnp.clip(jnp.floor((bases[None] * scale[:, None, None, None] + 50.0) / 100.0), 1.0, 255.0)
        v = jnp.clip(x, 0.0, 1.0)
        if c == 3:
            v = v @ jnp.asarray(_RGB_TO_YCBCR).T + jnp.asarray([0.0, 0.5, 0.5], v.dtype)
        v = v * 255.0 - 128.0
        ph, pw = -h % 8, -w % 8
        v = jnp.pad(v, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
        bh, bw = (h + ph) // 8, (w + pw) // 8
        blocks = v.reshape(n, bh, 8, bw, 8, c)
        coef = jnp.einsum("ki,nbiBjc,lj->nbBckl", dct, blocks, dct)  # (n, bh, bw, c, 8, 8)
        t = tables[:, None, None]                                    # (n, 1, 1, c, 8, 8)
        coef = round_(coef / t) * t
        blocks = jnp.einsum("ki,nbBckl,lj->nbiBjc", dct, coef, dct)
        v = blocks.reshape(n, h + ph, w + pw, c)[:, :h, :w, :]
        v = (v + 128.0) / 255.0
        if c == 3:
            v = (v - jnp.asarray([0.0, 0.5, 0.5], v.dtype)) @ jnp.asarray(_YCBCR_TO_RGB).T
        return jnp.clip(v, 0.0, 1.0)

    return transform


def compose(*transforms: Transform) -> Transform:
    """Apply `transforms` in order, each with its own key split from the one given."""
    if not transforms:
        return identity()
    if len(transforms) == 1:
        return transforms[0]

    def transform(x, key):
        for t, k in zip(transforms, jax.random.split(key, len(transforms))):
            x = t(x, k)
        return x

    return transform


# Every transformation by name; `from_spec` and the configs use these names.
TRANSFORMS: dict[str, Callable[..., Transform]] = {
    "identity": identity,
    "affine": affine,
    "blur": gaussian_blur,
    "brightness_contrast": brightness_contrast,
    "noise": gaussian_noise,
    "quantize": quantize,
    "jpeg": jpeg,
}


# ---------------------------------------------------------------------------------------------- specs

def _plain(value):
    """A config value (OmegaConf containers included) as plain, hashable Python: lists become tuples."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    if isinstance(value, Mapping):
        return tuple((str(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def canonical(spec) -> tuple[tuple[str, tuple], ...]:
    """A spec as ((name, ((keyword, value), ...)), ...) in application order; a BenchError for a bad spec."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(spec, (DictConfig, ListConfig)):
            spec = OmegaConf.to_container(spec, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(spec, str):
        items = [(name.strip(), None) for name in spec.split("+")]
    elif isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, Sequence):
        items = []
        for entry in spec:
            if isinstance(entry, str):
                items.append((entry, None))
            elif isinstance(entry, Mapping) and len(entry) == 1:
                items.extend(entry.items())
            else:
                raise BenchError(f"a transform list holds names or one-key mappings {{name: {{keyword: value}}}}, "
                                 f"got {entry!r}")
    else:
        raise BenchError(f"a transform spec is a name ('jpeg'), names joined by '+' ('affine+blur') or a mapping "
                         f"{{name: {{keyword: value}}}}, got {spec!r}")
    out = []
    for name, kwargs in items:
        if name not in TRANSFORMS:
            raise BenchError(f"unknown transform '{name}'; use one of {sorted(TRANSFORMS)} (bench/transforms.py)")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise BenchError(f"transform {name}: its parameters are a mapping {{keyword: value}}, got {kwargs!r}")
        accepted = inspect.signature(TRANSFORMS[name]).parameters
        unknown = sorted(set(map(str, kwargs)) - set(accepted))
        if unknown:
            raise BenchError(f"transform {name} takes no {', '.join(unknown)}; its parameters: "
                             f"{', '.join(accepted) or 'none'}")
        out.append((str(name), tuple(sorted((str(k), _plain(v)) for k, v in kwargs.items()))))
    if not out:
        raise BenchError("the transform spec is empty; name at least one transform (or 'identity')")
    return tuple(out)


def _thaw(value):
    return list(value) if isinstance(value, tuple) else value


@functools.lru_cache(maxsize=None)
def _build(spec: tuple) -> Transform:
    return compose(*(TRANSFORMS[name](**{k: _thaw(v) for k, v in kwargs}) for name, kwargs in spec))


def from_spec(spec) -> Transform:
    """The transform a spec names (a callable is returned as it is); the same spec, the same function object."""
    if callable(spec):
        return spec
    return _build(canonical(spec))


def describe(spec) -> str:
    """A short label of a spec: 'affine(rotation=15)+jpeg'."""
    if callable(spec):
        return getattr(spec, "__name__", "transform")
    parts = []
    for name, kwargs in canonical(spec):
        inner = ", ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in kwargs)
        parts.append(f"{name}({inner})" if inner else name)
    return "+".join(parts)


__all__ = ["ROUNDINGS", "TRANSFORMS", "Transform", "affine", "brightness_contrast", "canonical", "compose",
           "describe", "from_spec", "gaussian_blur", "gaussian_noise", "identity", "jpeg", "quantize"]
