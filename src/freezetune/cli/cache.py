"""`freezetune cache`: what the prefix-cache folder holds, and clearing it."""

from __future__ import annotations

from pathlib import Path

from freezetune.options.commands import CacheOptions


def run_cache(options: CacheOptions) -> str:
    """`freezetune cache list|clear`: freezetune's own prefix caches only (cache_folder.py); nothing else in
    the folder is touched, and what clear removes is listed."""
    import time

    from freezetune.models.loading import DEFAULT_CACHE_DIR
    from freezetune.plans.preview import human_bytes
    from freezetune.training.cache_folder import cache_entries, remove_cache

    root = (Path(options.cache_dir) if options.cache_dir else DEFAULT_CACHE_DIR) / "prefix"
    entries = cache_entries(root)
    if options.action == "clear":
        cutoff = (
            time.time() - 86400 * options.older_than
            if options.older_than is not None
            else float("inf")
        )
        gone = [e for e in entries if e["used"] < cutoff]
        lines = []
        for entry in gone:
            kept = remove_cache(entry["path"])
            lines.append(
                f"removed {Path(entry['path']).name} ({human_bytes(entry['bytes'])})"
                + (
                    f"; kept {len(kept)} files freezetune did not write: {', '.join(p.name for p in kept[:3])}"
                    if kept
                    else ""
                )
            )
        lines.append(
            f"removed {len(gone)} of {len(entries)} prefix caches "
            f"({human_bytes(sum(e['bytes'] for e in gone))}) from {root}"
        )
        return "\n".join(lines)
    if not entries:
        return f"no prefix caches in {root}"
    lines = [f"{'cache':<40}{'size':>10}  {'last used':<17}  model / plan"]
    for entry in reversed(entries):  # most recently used first
        meta, used = entry["meta"], time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["used"]))
        what = (
            "(damaged marker: a run at this key rebuilds it)"
            if entry["damaged"]
            else f"{meta.get('model', '?')} / {meta.get('plan', '?')}"
            # a schedule's cache holds its first phase's frozen prefix, not the plan's
            + (f" / schedule {meta['schedule']}" if meta.get("schedule") else "")
        )
        lines.append(
            f"{Path(entry['path']).name:<40}{human_bytes(entry['bytes']):>10}  {used:<17}  {what}"
        )
    lines.append(
        f"{len(entries)} caches, {human_bytes(sum(e['bytes'] for e in entries))} in {root}"
    )
    return "\n".join(lines)
