#!/usr/bin/env python3
"""Edits a safetensors file the way a damaged or hand-edited file would look,
for the command-line tests (tests/programs/check_errors.sh). Standard library
only. The checksums opnorm stores ("opnorm.crc32.<name>") are kept
consistent, so each edit tests what it names and not the checksum.

  edit_safetensors.py FILE set-metadata KEY VALUE
  edit_safetensors.py FILE set-nan TENSOR INDEX     (F32 tensors)
"""
import json
import struct
import sys
import zlib


def main():
    path, command, *args = sys.argv[1:]
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = bytearray(blob[8 + n:])
    metadata = header.setdefault("__metadata__", {})
    if command == "set-metadata":
        key, value = args
        metadata[key] = value
    elif command == "set-nan":
        name, index = args[0], int(args[1])
        begin, end = header[name]["data_offsets"]
        if header[name]["dtype"] != "F32":
            raise SystemExit(f"{name} is not F32")
        struct.pack_into("<f", data, begin + 4 * index, float("nan"))
        if "opnorm.crc32." + name in metadata:
            metadata["opnorm.crc32." + name] = f"{zlib.crc32(data[begin:end]):08x}"
    else:
        raise SystemExit(f"unknown command {command}")
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    text += " " * ((8 - len(text.encode("utf-8")) % 8) % 8)
    encoded = text.encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + bytes(data))


if __name__ == "__main__":
    main()
