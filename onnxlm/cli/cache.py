"""`onnxlm cache`: the artifacts exported from .gguf files run as they are, listed, pruned and removed."""
from __future__ import annotations

import argparse
import json
import time

from .args import command_parser
from .info import _size

DESCRIPTION = """\
A .gguf file given to generate, chat, score, bench, serve or the jobs is exported once into $ONNXLM_CACHE/gguf
(default $XDG_CACHE_HOME/onnxlm/gguf, else ~/.cache/onnxlm/gguf) and reused while the file is unchanged. This
command shows that cache and cleans it; it only ever lists or removes what onnxlm wrote there.

An entry is current (its file is where it was, unchanged), changed (other bytes are at that path now), outdated (an
earlier onnxlm exported it and the export has changed since: the next run exports it again), missing (the file was
moved or deleted: from its new place its artifact is linked under another name, when this entry is still here),
incomplete (no onnxlm.json) or unknown (no stamp names its file). An entry linked from another (the same bytes
at another path) shares its files with it on disk: its size is marked *, the total counts them once, and removing
one of the two frees nothing of them. Nothing here imports torch.

  onnxlm cache [ls]           list the entries, their sizes and states (the default)
  onnxlm cache prune          remove the changed, outdated and missing entries, and what killed exports left
  onnxlm cache rm TARGET ...  remove entries by their GGUF file's path (even a file since deleted) or their name

An entry whose file an export is writing is kept and said so ("kept: ..."). Exit status 1: something could not be
deleted, or an entry named to `rm` was kept.

examples:
  onnxlm cache
  onnxlm cache prune --dry-run
  onnxlm cache rm ~/models/gemma-3-270m-q4_k_m.gguf
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "cache", help="list, prune or remove the artifacts exported from .gguf files",
                       description=DESCRIPTION)
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run_ls)
    actions = p.add_subparsers(dest="action", metavar="{ls,prune,rm}", title="actions (default: ls)")
    _action(actions, "ls", run_ls, help="list the entries (the default)", description="List the GGUF cache's "
            "entries with their sizes, states and files, and what killed exports left.")
    _action(actions, "prune", run_prune, removes=True, help="remove the entries no run will use again",
            description="Remove the changed, outdated and missing entries with their stamps, and the scratch "
                        "directories of exports that were killed (their lock is free). Current, incomplete and "
                        "unknown entries stay, and so does anything onnxlm did not write.")
    rm = _action(actions, "rm", run_rm, removes=True, help="remove entries, whatever their state",
                 description="Remove the entries of the given GGUF files (by path, even of a file since deleted) "
                             "or names (as `onnxlm cache` lists them). Every target is checked before anything is "
                             "removed; nothing outside the cache is touched.")
    rm.add_argument("targets", nargs="+", metavar="TARGET", help="a .gguf file's path or an entry's name")


def _action(actions, name: str, func, *, removes: bool = False, **texts) -> argparse.ArgumentParser:
    """One action's parser: --json (left to the command's own when not given: `cache --json ls` and `cache ls
    --json` agree) and, for an action that removes, --dry-run."""
    a = actions.add_parser(name, **texts)
    if removes:
        a.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    a.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as one JSON object")
    a.set_defaults(func=func)
    return a


def _entry_json(e, linked: dict | None = None) -> dict:
    return {"name": e.name, "path": str(e.path), "source": e.source, "state": e.state, "bytes": e.bytes,
            "variant": e.variant, "exported": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.exported)),
            **({"linked_with": (linked or {}).get(e.name, [])} if linked is not None else {})}


def _leftover_json(left) -> dict:
    return {"path": str(left.path), "bytes": left.bytes, "why": left.why}


def run_ls(args) -> int:
    from onnxlm.export.gguf_cache import PRUNED, cache_entries, disk_bytes, freed_bytes, gguf_cache_dir, \
        leftovers, linked_entries

    root, entries, extra = gguf_cache_dir(), cache_entries(), leftovers()
    total, linked = disk_bytes(entries + extra), linked_entries(entries)
    if args.json:
        print(json.dumps({"cache": str(root), "bytes": total, "entries": [_entry_json(e, linked) for e in entries],
                          "leftovers": [_leftover_json(x) for x in extra]}, indent=2))
        return 0
    print(f"{root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {_size(total)}")
    if entries:
        rows = [("NAME", "SIZE", "STATE", "HOLDS", "EXPORTED", "FILE")]
        rows += [(e.name, _size(e.bytes) + ("*" if e.name in linked else ""), e.state, e.variant,
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(e.exported)), e.source or "?") for e in entries]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    if linked:
        print("* its files are hard-linked with another entry's (the same GGUF bytes at another path): counted once "
              "in the total")
    for x in extra:
        print(f"leftover: {x.path.name} ({_size(x.bytes)}): {x.why}")
    freed = [e for e in entries if e.state in PRUNED]
    if freed or extra:
        n = len(freed) + len(extra)
        size = freed_bytes(freed + extra, [e for e in entries if e.state not in PRUNED])
        print(f"`onnxlm cache prune` would remove {n} of these ({_size(size)})")
    return 0


def _report(args, done, *, strict: bool) -> int:
    """Prints a ``Removal`` -> the exit status: 1 when something could not be deleted, or, with ``strict`` (``rm``:
    the user named them), when an entry was kept."""
    from onnxlm.export.gguf_cache import BUSY, prune_retries

    status = 1 if done.failed or (strict and done.kept) else 0
    if args.json:
        print(json.dumps({"dry_run": done.dry_run, "removed": [_entry_json(e) for e in done.removed],
                          "leftovers": [_leftover_json(x) for x in done.leftovers],
                          "kept": [{**_entry_json(e), "why": why} for e, why in done.kept],
                          "failed": [{"path": str(path), "error": why} for path, why in done.failed],
                          "bytes": done.bytes}, indent=2))
        return status
    verb = "would remove" if done.dry_run else "removed"
    for e in done.removed:
        linked = ", its files stay linked in another entry" if e.files.keys() & done.staying.keys() else ""
        print(f"{verb}: {e.name} ({_size(e.bytes)}, {e.state}{', ' + e.source if e.source else ''}{linked})")
    for x in done.leftovers:
        print(f"{verb}: {x.path.name} ({_size(x.bytes)}, {x.why})")
    for e, why in done.kept:
        hint = ": try again when it ends" if why == BUSY else ""
        print(f"{'would keep' if done.dry_run else 'kept'}: {e.name} ({why}{hint})")
    for path, why in done.failed:
        again = ": `onnxlm cache prune` tries again" if prune_retries(path) else ""
        print(f"could not delete {path} ({why}){again}")
    print(f"{'would free' if done.dry_run else 'freed'} {_size(done.bytes)}" if done.removed or done.leftovers else
          "nothing to remove")
    return status


def run_prune(args) -> int:
    from onnxlm.export.gguf_cache import prune

    return _report(args, prune(dry_run=args.dry_run), strict=False)


def run_rm(args) -> int:
    from onnxlm.export.gguf_cache import remove

    return _report(args, remove(args.targets, dry_run=args.dry_run), strict=True)
