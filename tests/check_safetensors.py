#!/usr/bin/env python3
"""Cross-checks opnorm's safetensors files against PyTorch.

Usage: check_safetensors.py <directory written by write_safetensors_for_python>

Uses only the standard library and torch (torch 1.13 has no safetensors
module), so the file format is parsed here from its specification:
8-byte little-endian header length, JSON header, raw little-endian data.
Checks, for the float and the double model:
  * the bytes are laid out as the reference writer lays them out (compact
    JSON, "__metadata__" first, header padded with spaces to a multiple of 8,
    tensors by descending dtype alignment then name, tiling the data);
  * names, shapes and dtypes equal the state_dict of the same nn.Sequential,
    which then loads the tensors with load_state_dict(strict=True);
  * that torch model computes the logits opnorm computed for the same input;
  * an int64 scalar has the dtype and shape of BatchNorm's num_batches_tracked;
  * every tensor's "opnorm.crc32.<name>" metadata string is the zlib CRC-32
    of its bytes, computed here independently, and a flipped byte in a copy
    of the checkpoint makes exactly that tensor's checksum disagree; the
    checkpoint with its checksums is the one load_state_dict(strict=True)
    loads above, so the checksums cost PyTorch nothing.
Exits 0 on success, 1 on a failed check, 77 (ctest SKIP_RETURN_CODE) when
torch cannot be imported.
"""
import json
import os
import struct
import sys
import zlib

try:
    import torch
except ImportError as error:  # the ctest registration maps 77 to "skipped"
    print(f"skipping: torch is not importable by {sys.executable}: {error}")
    sys.exit(77)

# safetensors dtype -> (torch dtype, bytes per element, rank in the reference
# implementation's alignment order, which its writer sorts by, descending).
DTYPES = {
    "BOOL": (torch.bool, 1, 0), "U8": (torch.uint8, 1, 1), "I8": (torch.int8, 1, 2),
    "I16": (torch.int16, 2, 5), "F16": (torch.float16, 2, 7), "BF16": (torch.bfloat16, 2, 8),
    "I32": (torch.int32, 4, 9), "F32": (torch.float32, 4, 11), "F64": (torch.float64, 8, 12),
    "I64": (torch.int64, 8, 13),
}


def fail(path, message):
    raise AssertionError(f"{path}: {message}")


CRC_PREFIX = "opnorm.crc32."


class CrcMismatch(AssertionError):
    def __init__(self, path, name, stored, computed):
        super().__init__(f"{path}: tensor {name}: stored CRC-32 {stored}, computed {computed}")
        self.name = name


def read_safetensors(path):
    """Returns (metadata, {name: torch tensor}) after checking the layout and
    every stored CRC-32; the checksum keys are removed from metadata."""
    metadata, tensors, _ = read_safetensors_and_checksums(path)
    return metadata, tensors


def read_safetensors_and_checksums(path):
    """read_safetensors, plus the names whose CRC-32 was stored and checked."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        fail(path, "shorter than 8 bytes")
    (n,) = struct.unpack("<Q", blob[:8])
    if n % 8 != 0:
        fail(path, f"header length {n} is not a multiple of 8")
    raw_header = blob[8:8 + n].decode("utf-8")
    text = raw_header.rstrip(" ")
    if not text.startswith("{") or not text.endswith("}"):
        fail(path, "the header is not a padded JSON object")
    if len(raw_header) - len(text) >= 8:
        fail(path, "more padding than needed for 8-byte alignment")
    header = json.loads(text)  # dicts keep the file's key order
    compact = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    if compact != text:
        fail(path, f"the header is not compact JSON as the reference writes it:\n{text}\n{compact}")

    if "__metadata__" in header and next(iter(header)) != "__metadata__":
        fail(path, "__metadata__ is not the first key")
    metadata = header.pop("__metadata__", None)
    data = blob[8 + n:]
    names = list(header.keys())
    expected_order = sorted(names, key=lambda k: (-DTYPES[header[k]["dtype"]][2], k))
    if names != expected_order:
        fail(path, f"tensors are stored in order {names}, the reference writer uses {expected_order}")

    tensors = {}
    checksummed = []
    offset = 0
    for name in names:
        info = header[name]
        if list(info.keys()) != ["dtype", "shape", "data_offsets"]:
            fail(path, f"{name}: keys {list(info.keys())}")
        torch_dtype, size, _ = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        if begin != offset or end - begin != numel * size:
            fail(path, f"{name}: data_offsets {info['data_offsets']} for shape {info['shape']}")
        offset = end
        flat = torch.frombuffer(bytearray(data[begin:end]), dtype=torch_dtype)
        tensors[name] = flat.reshape(info["shape"])
        stored = (metadata or {}).pop(CRC_PREFIX + name, None)
        if stored is not None:
            computed = f"{zlib.crc32(data[begin:end]):08x}"
            if stored != computed:
                raise CrcMismatch(path, name, stored, computed)
            checksummed.append(name)
    if offset != len(data):
        fail(path, f"tensors cover {offset} of {len(data)} data bytes")
    leftover = [k for k in (metadata or {}) if k.startswith(CRC_PREFIX)]
    if leftover:
        fail(path, f"checksums for tensors the file does not hold: {leftover}")
    return metadata, tensors, checksummed


def check_flipped_byte_is_caught(path, directory, name):
    """A copy of the checkpoint with one bit of tensor `name` flipped must fail
    that tensor's CRC-32 (and only that one) in this independent reader."""
    with open(path, "rb") as f:
        blob = bytearray(f.read())
    (n,) = struct.unpack("<Q", blob[:8])
    begin, end = json.loads(blob[8:8 + n].decode("utf-8"))[name]["data_offsets"]
    blob[8 + n + (begin + end) // 2] ^= 0x10
    flipped = os.path.join(directory, "flipped.safetensors")
    with open(flipped, "wb") as f:
        f.write(blob)
    try:
        read_safetensors(flipped)
    except CrcMismatch as mismatch:
        if mismatch.name != name:
            fail(flipped, f"the flipped byte of {name} failed the checksum of {mismatch.name}")
        return
    fail(flipped, f"a flipped byte in {name} passed its CRC-32")


def check_model(directory, suffix, torch_dtype, tolerance):
    path = os.path.join(directory, f"dense_relu_dense_{suffix}.safetensors")
    metadata, state, checksummed = read_safetensors_and_checksums(path)
    want = {"epoch": "3", "method": "standard", "scalar": suffix, "format": "pt"}
    if metadata != want:
        fail(path, f"metadata {metadata}, expected {want}")
    if sorted(checksummed) != sorted(state):
        fail(path, f"CRC-32 checksums for {sorted(checksummed)}, but the file holds {sorted(state)}")
    check_flipped_byte_is_caught(path, directory, "2.weight")

    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3)).to(torch_dtype)
    reference = model.state_dict()
    if sorted(state) != sorted(reference):
        fail(path, f"names {sorted(state)}, PyTorch has {sorted(reference)}")
    for name, tensor in reference.items():
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            fail(path, f"{name}: {state[name].dtype} {tuple(state[name].shape)}, "
                       f"PyTorch has {tensor.dtype} {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=True)

    probe_path = os.path.join(directory, f"probe_{suffix}.safetensors")
    probe_metadata, probe = read_safetensors(probe_path)
    if probe_metadata != {"what": "input, logits, step"}:
        fail(probe_path, f"metadata {probe_metadata}")
    with torch.no_grad():
        logits = model(probe["input"])
    if logits.dtype != probe["logits"].dtype or logits.shape != probe["logits"].shape:
        fail(probe_path, f"logits {probe['logits'].dtype} {tuple(probe['logits'].shape)}, "
                         f"torch gives {logits.dtype} {tuple(logits.shape)}")
    error = (logits - probe["logits"]).abs().max().item()
    scale = max(1.0, probe["logits"].abs().max().item())
    if error > tolerance * scale:
        fail(probe_path, f"torch's logits differ from opnorm's by {error:.3e} (tolerance {tolerance * scale:.1e})")

    counter = torch.nn.BatchNorm1d(3).state_dict()["num_batches_tracked"]
    step = probe["step"]
    if step.dtype != counter.dtype or step.shape != counter.shape or step.item() != 2 ** 40:
        fail(probe_path, f"step is {step.dtype} {tuple(step.shape)} = {step.item()}, "
                         f"num_batches_tracked is {counter.dtype} {tuple(counter.shape)}")
    print(f"{suffix}: names, shapes, dtypes, layout, metadata and CRC-32 checksums match PyTorch; "
          f"logits agree to {error:.1e}")


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    try:
        # float32 sums of 7 products in another order: a few ulps of values ~1.
        check_model(sys.argv[1], "f32", torch.float32, 1e-6)
        check_model(sys.argv[1], "f64", torch.float64, 1e-14)
    except AssertionError as error:
        print(f"FAILED: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
