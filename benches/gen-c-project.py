#!/usr/bin/env python3
"""A C project for the compile cache benchmark: UNITS .c files of about 300 lines each, all
including HEADERS shared headers, and a main.c calling one function of each unit.
Deterministic. Usage: gen-c-project.py DIR [UNITS] [HEADERS]"""
import os
import sys

out = sys.argv[1]
units = int(sys.argv[2]) if len(sys.argv) > 2 else 200
headers = int(sys.argv[3]) if len(sys.argv) > 3 else 20
os.makedirs(os.path.join(out, "include"), exist_ok=True)
os.makedirs(os.path.join(out, "src"), exist_ok=True)

for h in range(headers):
    lines = [f"#ifndef H{h}_H", f"#define H{h}_H", "#include <stddef.h>"]
    lines += [f"static inline int h{h}_f{i}(int x) {{ return x * {i + 1} + {h}; }}" for i in range(10)]
    lines += [f"struct h{h}_s {{ int a; long b; char c[{h + 4}]; }};", "#endif", ""]
    with open(os.path.join(out, "include", f"h{h}.h"), "w") as f:
        f.write("\n".join(lines))

includes = "".join(f'#include "h{h}.h"\n' for h in range(headers))
for u in range(units):
    body = [includes, f"int unit{u}(int x) {{", "    int acc = x;"]
    # About 300 lines: a chain of small loops the optimiser has to work through.
    for i in range(95):
        h = (u + i) % headers
        body += [
            f"    for (int i{i} = 0; i{i} < {i % 7 + 2}; i{i}++)",
            f"        acc = h{h}_f{i % 10}(acc ^ i{i}) % 1000003;",
            f"    acc += {u * 31 + i};",
        ]
    body += ["    return acc;", "}", ""]
    with open(os.path.join(out, "src", f"unit{u}.c"), "w") as f:
        f.write("\n".join(body))

with open(os.path.join(out, "src", "main.c"), "w") as f:
    f.write("#include <stdio.h>\n")
    f.write("".join(f"int unit{u}(int);\n" for u in range(units)))
    f.write("int main(void) {\n    long s = 0;\n")
    f.write("".join(f"    s += unit{u}({u});\n" for u in range(units)))
    f.write('    printf("%ld\\n", s);\n    return 0;\n}\n')
