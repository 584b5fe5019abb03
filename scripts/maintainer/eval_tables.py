#!/usr/bin/python3
"""Joins the `tve eval` tables of scripts/maintainer/eval_shipped_models.sh into one Markdown table per model
and task (the rows of the RISE/Kernel SHAP run under those of the other methods), for models/README.md.

    /usr/bin/python3 scripts/maintainer/eval_tables.py OUT_DIR
"""
import sys
from pathlib import Path


def rows(table: Path):
    lines = table.read_text().splitlines()
    return lines[:2], [line for line in lines[2:] if line.startswith("| ")], [line for line in lines if line and not line.startswith("|")]


def main() -> None:
    out = Path(sys.argv[1])
    for model in ("resnet", "vit", "swin"):
        for task in ("emoji", "fashion"):
            main_table, sampling = out / f"{model}-{task}" / "table.md", out / f"{model}-{task}-sampling" / "table.md"
            if not main_table.exists():
                continue
            header, body, notes = rows(main_table)
            if sampling.exists():
                body += rows(sampling)[1]
                notes.append("rise and kernelshap with --samples 500.")
            print(f"#### {model}, {task} held-out scenes" + (" (head `fashion`)" if task != "emoji" else ""), "", *header, *body, "",
                  *notes, "", sep="\n")


if __name__ == "__main__":
    main()
