"""Device-side halves of prediction: input normalisation and finalising blended rows.

The scene's raw values (uint8, or the scene's dtype) travel to the model's device,
where :class:`InputNormaliser` turns them into the model's float32 input; the
blended sums of final rows are turned into uint8 classes, confidence and
probabilities there by :func:`finalise`, and only those uint8 rows travel back.
The same torch code runs on CPU and CUDA, except that on CPU the rows are
finalised by the same operations in NumPy (:func:`finalise_numpy`), whose
overhead per operation is a fraction of torch's: a 384 x 4096 px block of six
classes takes 3.7 instead of 4.8 ms, 17 instead of 29 ms with the confidence.

The arithmetic is exactly that of the NumPy pipeline it replaces (float32
``(x - mean) * inv_std``; nodata set to zero; argmax taking the first maximum;
softmax as ``exp(x - max) / sum`` with the sum taken class by class in order;
``rint(255 p)``), so on CPU the outputs are bit for bit the same. On CPU the
exponential is NumPy's, whose last bit differs from torch's for about 40% of
values; on CUDA it is torch's.
"""

import numpy as np
import torch

from .writer import CLASS_NODATA, CONFIDENCE_NODATA, PROBABILITY_NODATA

#: Pixels per run when normalising pixel-interleaved input (see :class:`InputNormaliser`).
INTERLEAVED_PIXELS = 16

#: Pixels per chunk when finalising or normalising on CPU: a float32 plane of it
#: (256 KiB) stays in the core's cache between the operations on it.
CPU_CHUNK_PIXELS = 1 << 16

#: Output kinds that need the softmax.
SOFT_KINDS = frozenset({"confidence", "probabilities"})


def exp_(x: torch.Tensor) -> torch.Tensor:
    """Exponentiate a contiguous float32 tensor in place (NumPy's ``exp`` on CPU)."""
    if x.device.type == "cpu":
        array = x.numpy()
        np.exp(array, out=array)
    else:
        x.exp_()
    return x


def greater(a: torch.Tensor, b: torch.Tensor | float, out: torch.Tensor) -> torch.Tensor:
    """Write ``a > b`` into the boolean *out* (NumPy's comparison on CPU).

    On CPU torch's float comparisons run several times slower than NumPy's
    (about 34 against 5 us for 64k values); both give the same booleans.
    """
    if a.device.type == "cpu":
        other = b.numpy() if isinstance(b, torch.Tensor) else b
        np.greater(a.numpy(), other, out=out.numpy())
    else:
        torch.gt(a, b, out=out)
    return out


def class_max(x: torch.Tensor) -> torch.Tensor:
    """Maximum over axis 0, class by class (exact, fast on CPU for few classes)."""
    best = x[0].clone()
    for k in range(1, x.shape[0]):
        torch.maximum(best, x[k], out=best)
    return best


def class_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over axis 0 in class order (the order of NumPy's axis-0 reduction)."""
    total = x[0].clone()
    for k in range(1, x.shape[0]):
        total += x[k]
    return total


def argmax(x: torch.Tensor) -> torch.Tensor:
    """Return the uint8 index of the first maximum over axis 0 (at most 255 classes).

    Branch-free: class *k* is larger than every index so far, so "take *k* where
    it beats the best" is ``maximum(index, better * k)``; ``where`` and
    ``masked_fill`` branch per element and cost several times more on CPU.
    """
    best = x[0].clone()
    index = torch.zeros(best.shape, dtype=torch.uint8, device=x.device)
    better = torch.empty(best.shape, dtype=torch.bool, device=x.device)
    step = torch.empty(best.shape, dtype=torch.uint8, device=x.device)
    for k in range(1, x.shape[0]):
        greater(x[k], best, better)
        torch.mul(better.view(torch.uint8), k, out=step)
        torch.maximum(index, step, out=index)
        torch.maximum(best, x[k], out=best)
    return index


def _argmax_numpy(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    """:func:`argmax` of a float32 ``(K, ...)`` array in NumPy, into the uint8 *index*."""
    best = x[0].copy()
    index[...] = 0
    better = np.empty(best.shape, dtype=bool)
    step = np.empty(best.shape, dtype=np.uint8)
    for k in range(1, x.shape[0]):
        np.greater(x[k], best, out=better)
        np.multiply(better, np.uint8(k), out=step)
        np.maximum(index, step, out=index)
        np.maximum(best, x[k], out=best)
    return index


def softmax_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``exp(x - max)`` over axis 0 of float32 logits (a new tensor) and its class sum.

    The softmax is the first divided by the second; its maximum is exactly
    ``1 / sum``, since the largest term is ``exp(0) = 1`` and division is monotonic.
    """
    e = exp_(logits - class_max(logits))
    return e, class_sum(e)


def to_uint8(p: torch.Tensor) -> torch.Tensor:
    """Scale values in ``[0, 1]`` to rounded (half to even) uint8 (NumPy's cast on CPU, faster)."""
    scaled = torch.round(p * 255.0)
    if scaled.device.type == "cpu":
        return torch.from_numpy(scaled.numpy().astype(np.uint8))
    return scaled.to(torch.uint8)


def finalise(
    sums: torch.Tensor,
    weights: torch.Tensor | None,
    kinds: frozenset[str] | set[str],
    chunk_pixels: int | None = None,
) -> dict[str, torch.Tensor]:
    """Turn blended sums of final pixels into the uint8 output bands, on their device.

    On CPU the block is finalised in NumPy (:func:`finalise_numpy`), whose overhead
    per operation is a fraction of torch's, in chunks of rows whose planes fit the
    core's cache (:data:`CPU_CHUNK_PIXELS`): each step of the class loop then reads
    its running maximum from the cache rather than from memory. Elsewhere torch
    finalises the whole block (:func:`finalise_torch`); the bytes are the same.

    Args:
        sums: ``(K, h, w)`` weighted logit sums.
        weights: ``(h, w)`` weight sums; zero marks nodata. ``None`` when every
            pixel is valid (only ``classes`` may be asked for then).
        kinds: Outputs wanted besides ``classes``: ``confidence``, ``probabilities``.
        chunk_pixels: Pixels per chunk on CPU (default :data:`CPU_CHUNK_PIXELS`).

    Returns:
        ``classes`` ``(h, w)`` (nodata :data:`CLASS_NODATA`) and, if asked,
        ``confidence`` ``(h, w)`` (``rint(255 max p)``, nodata
        :data:`CONFIDENCE_NODATA`) and ``probabilities`` ``(K, h, w)``
        (``min(rint(255 p), 254)``, nodata :data:`PROBABILITY_NODATA`).
    """
    if weights is None and SOFT_KINDS & set(kinds):
        raise ValueError("confidence and probabilities need the weight sums")
    if sums.device.type != "cpu":
        return finalise_torch(sums, weights, kinds)
    k, h, w = sums.shape
    bands = {"classes": torch.empty((h, w), dtype=torch.uint8)}
    for kind, shape in (("confidence", (h, w)), ("probabilities", (k, h, w))):
        if kind in kinds:
            bands[kind] = torch.empty(shape, dtype=torch.uint8)
    out = {kind: band.numpy() for kind, band in bands.items()}
    x, weight = sums.numpy(), None if weights is None else weights.numpy()
    step = max(1, (chunk_pixels or CPU_CHUNK_PIXELS) // max(w, 1))
    for r in range(0, h, step):
        rows = slice(r, r + step)
        chunk = {kind: band[..., rows, :] for kind, band in out.items()}
        finalise_numpy(x[:, rows], None if weight is None else weight[rows], chunk)
    return bands


def finalise_torch(
    sums: torch.Tensor, weights: torch.Tensor | None, kinds: frozenset[str] | set[str]
) -> dict[str, torch.Tensor]:
    """:func:`finalise` of a whole block in torch, on the block's device."""
    if weights is None:
        return {"classes": argmax(sums)}
    positive = torch.empty(weights.shape, dtype=torch.bool, device=weights.device)
    valid = greater(weights, 0.0, positive).view(torch.uint8)
    bands = {"classes": fill_nodata(argmax(sums), valid, CLASS_NODATA)}
    if not SOFT_KINDS & set(kinds):
        return bands
    e, total = softmax_terms(sums / (weights + (1 - valid)))
    if "confidence" in kinds:
        confidence = to_uint8(torch.ones_like(total).div_(total))
        bands["confidence"] = fill_nodata(confidence, valid, CONFIDENCE_NODATA)
    if "probabilities" in kinds:
        probabilities = to_uint8(e.div_(total)).clamp_(max=PROBABILITY_NODATA - 1)
        bands["probabilities"] = fill_nodata(probabilities, valid, PROBABILITY_NODATA)
    return bands


def fill_nodata(x: torch.Tensor, valid: torch.Tensor, value: int) -> torch.Tensor:
    """Set uint8 *x* to *value* where the uint8 0/1 *valid* is 0, in place, without branching."""
    x.mul_(valid)
    if value:
        x.add_(torch.mul(1 - valid, value))
    return x


def finalise_numpy(
    sums: np.ndarray, weights: np.ndarray | None, out: dict[str, np.ndarray]
) -> None:
    """:func:`finalise` of float32 NumPy sums into the uint8 arrays of *out*.

    The operations, and so the bytes, are those of :func:`finalise_torch`.

    Args:
        sums: ``(K, h, w)`` weighted logit sums.
        weights: ``(h, w)`` weight sums, or ``None`` when every pixel is valid.
        out: ``classes`` ``(h, w)``, and ``confidence`` ``(h, w)`` and
            ``probabilities`` ``(K, h, w)`` if wanted.
    """
    classes = _argmax_numpy(sums, out["classes"])
    if weights is None:
        return
    valid = np.greater(weights, 0).view(np.uint8)
    invalid = 1 - valid
    _fill_nodata_numpy(classes, valid, invalid, CLASS_NODATA)
    if not SOFT_KINDS & out.keys():
        return
    e = np.divide(sums, weights + invalid)
    best = e[0].copy()
    for k in range(1, len(e)):
        np.maximum(best, e[k], out=best)
    np.exp(np.subtract(e, best, out=e), out=e)
    total = e[0].copy()
    for k in range(1, len(e)):
        total += e[k]
    if "confidence" in out:
        confidence = _to_uint8_numpy(np.divide(np.float32(1.0), total), out["confidence"])
        _fill_nodata_numpy(confidence, valid, invalid, CONFIDENCE_NODATA)
    if "probabilities" in out:
        probabilities = _to_uint8_numpy(np.divide(e, total, out=e), out["probabilities"])
        np.minimum(probabilities, PROBABILITY_NODATA - 1, out=probabilities)
        _fill_nodata_numpy(probabilities, valid, invalid, PROBABILITY_NODATA)


def _to_uint8_numpy(p: np.ndarray, out: np.ndarray) -> np.ndarray:
    """:func:`to_uint8` of float32 *p* into *out* (*p* is overwritten)."""
    np.rint(np.multiply(p, np.float32(255.0), out=p), out=p)
    np.copyto(out, p, casting="unsafe")
    return out


def _fill_nodata_numpy(x: np.ndarray, valid: np.ndarray, invalid: np.ndarray, value: int) -> None:
    """:func:`fill_nodata` of a NumPy array, given the uint8 0/1 *valid* and ``1 - valid``."""
    np.multiply(x, valid, out=x)
    if value:
        x += invalid * np.uint8(value)


class InputNormaliser:
    """Turns raw window batches into the model's normalised float32 input on the device.

    The model sees ``(x - mean) * inv_std`` per band in float32 (the height band
    last), zero at nodata pixels and wherever a value is not finite, in
    channels-last layout. Pixel-interleaved integer bands on CPU are first converted
    to float32 and then shifted: torch's subtraction of mixed types takes a slower,
    unvectorised loop, and the conversion rounds as that subtraction does (exact but
    for int32 beyond 2**24), so the values are the same.
    """

    def __init__(self, mean: np.ndarray, inv_std: np.ndarray, device: torch.device) -> None:
        """Prepare the per-band constants.

        Args:
            mean: ``(C, 1, 1)`` float32 band means, the height band last if any.
            inv_std: ``(C, 1, 1)`` float32 reciprocal standard deviations.
            device: The model's device.
        """
        self.mean = torch.from_numpy(np.ascontiguousarray(mean, np.float32))[None].to(device)
        self.inv_std = torch.from_numpy(np.ascontiguousarray(inv_std, np.float32))[None].to(device)
        self.channels = self.mean.shape[1]
        self._input: torch.Tensor | None = None
        #: The constants repeated over :data:`INTERLEAVED_PIXELS` pixels of pixel-interleaved data.
        self._mean_run = self.mean.flatten().repeat(INTERLEAVED_PIXELS)
        self._inv_std_run = self.inv_std.flatten().repeat(INTERLEAVED_PIXELS)

    def __call__(
        self,
        image: torch.Tensor,
        valid: torch.Tensor | None = None,
        height: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the normalised ``(B, C, h, w)`` input.

        Args:
            image: ``(B, C_optical, h, w)`` raw optical bands on the device, any dtype.
            valid: ``(B, h, w)`` boolean validity, or ``None`` when all pixels are valid.
            height: ``(B, h, w)`` float32 height band, or ``None``.
            out: Channels-last float32 tensor whose memory to use (at least ``B``
                windows of this size), else the normaliser's own.

        Returns:
            float32 channels-last tensor on the device; unless *out* is given, its
            memory is reused by the next call (queued after the previous batch's
            work on the same stream).
        """
        b, c, h, w = image.shape
        if out is not None and out.shape[0] >= b and out.shape[1:] == (self.channels, h, w):
            x = out[:b]
        else:
            x = self._buffer(b, h, w, image.device, shared=out is None)
        if self._interleaved(image, height):
            run = self._mean_run.numel()
            pixels = image.permute(0, 2, 3, 1).view(-1, run)
            out = x.permute(0, 2, 3, 1).view(-1, run)
            cpu = image.device.type == "cpu"
            step = CPU_CHUNK_PIXELS // run if cpu else len(out)
            cast = cpu and image.dtype != torch.float32
            for r in range(0, len(out), step):
                chunk = out[r : r + step]
                if cast:
                    chunk.copy_(pixels[r : r + step])
                    chunk -= self._mean_run
                else:
                    torch.sub(pixels[r : r + step], self._mean_run, out=chunk)
                chunk *= self._inv_std_run
        else:
            torch.sub(image, self.mean[:, :c], out=x[:, :c])
            if height is not None:
                torch.sub(height[:, None], self.mean[:, c:], out=x[:, c:])
            x *= self.inv_std
        if valid is not None:
            x.masked_fill_(~valid[:, None], 0.0)
        if height is not None or image.dtype.is_floating_point:
            torch.nan_to_num_(x, nan=0.0, posinf=0.0, neginf=0.0)
        return x

    def _interleaved(self, image: torch.Tensor, height: torch.Tensor | None) -> bool:
        """Whether *image* can be normalised as flat runs of whole pixels.

        A per-band constant broadcast along the innermost (band) axis of
        pixel-interleaved data is several times slower than a flat operation; so
        the bands are viewed as rows of :data:`INTERLEAVED_PIXELS` whole pixels and
        the constants repeated to match.
        """
        return (
            height is None
            and image.is_contiguous(memory_format=torch.channels_last)
            and (image.shape[2] * image.shape[3]) % INTERLEAVED_PIXELS == 0
        )

    def _buffer(self, b: int, h: int, w: int, device: torch.device, shared: bool) -> torch.Tensor:
        """A ``(b, C, h, w)`` channels-last float32 tensor, reusing the last one's if *shared*."""
        shape = (b, self.channels, h, w)
        fits = self._input is not None and self._input.shape[0] >= b
        if shared and fits and self._input.shape[2:] == (h, w):
            return self._input[:b]
        x = torch.empty(
            shape, dtype=torch.float32, device=device, memory_format=torch.channels_last
        )
        if shared:
            self._input = x
        return x
