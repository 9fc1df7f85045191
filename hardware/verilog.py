"""Synthesisable Verilog-2005 for the normaliser units of hardware/fixed.py, written from a `Unit`.

    from hardware.fixed import Unit
    from hardware.verilog import generate, testbench
    text = generate(Unit("consmax", in_bits=8, out_bits=8))   # one file: the exp module + the top

The numerics are hardware/fixed.py's (its docstring states every format and width); this module only
writes them as RTL, one wire per step of the model, so the two can be read side by side. Ports:

  elementwise (consmax, relumax, sigmoidmax, polymax): combinational, `x` (signed in_bits), `keep`,
      consmax also `offset` (signed OW bits: c = beta log2(e) + log2(gamma)); output `y`.
  streaming (softmax, softermax): `clk`, `op` (2 bits: 0 clear the row state, then softmax 1 max pass,
      2 sum pass, 3 output pass; softermax 1 the online max-and-sum pass, 3 output pass), `x`, `keep`;
      the state updates on the rising edge; `y` is valid during the output pass.
"""
from __future__ import annotations

from hardware import fixed
from hardware.fixed import Unit


def lit(v: int, width: int | None = None) -> str:
    """A sized Verilog literal; negative values signed."""
    v = int(v)
    w = width or max(1, abs(v).bit_length() + (1 if v < 0 else 0))
    if v < 0:
        return f"-{w}'sd{-v}"
    return f"{w}'d{v}"


def slit(v: int, width: int) -> str:
    v = int(v)
    return f"-{width}'sd{-v}" if v < 0 else f"{width}'sd{v}"


def bits(v: int) -> int:
    """Bits of an unsigned value (at least 1)."""
    return max(1, int(v).bit_length())


# ----------------------------------------------------------------------------------- the exponential
def exp_module(unit: Unit, name: str, dw: int, offset: int = 0) -> str:
    """2^(t / 2^TF) of d (signed dw bits, in_frac fractional bits), t = d log2(e) (or d for base 2),
    minus a signed `offset`-bit input in t's format when offset > 0; hardware/fixed.exp2_fixed."""
    tf, L, P = unit.TF, unit.lut_bits, unit.P
    interp = tf - L
    qmax, ew = fixed.exp_qmax(unit), fixed.exp_width(unit)
    table = fixed.lut_table(unit)
    port = f"input signed [{offset - 1}:0] offset, " if offset else ""
    lines = [f"module {name} (input signed [{dw - 1}:0] d, {port}output [{ew - 1}:0] e);"]
    if unit.base == 2.0:
        shift = tf - unit.in_frac
        tw = dw + max(0, shift)
        expr = f"d <<< {shift}" if shift >= 0 else f"d >>> {-shift}"
        lines.append(f"  // base 2: the exponent needs no constant multiply (t = d, {tf} fractional bits)")
        lines.append(f"  wire signed [{tw - 1}:0] t = {expr};")
    else:
        c, cb = fixed.log2e_const(unit)
        tw = dw + bits(c) + 1
        lines.append(f"  // t = d * log2(e): the constant {c} / 2^{cb}, then floor to {tf} fractional bits")
        lines.append(f"  wire signed [{tw - 1}:0] prod = d * {slit(c, bits(c) + 1)};")
        lines.append(f"  wire signed [{tw - 1}:0] t{'0' if offset else ''} = prod >>> {unit.in_frac + cb - tf};")
    if offset:
        tw = max(tw, offset) + 1
        lines.append(f"  wire signed [{tw - 1}:0] t = t0 - offset;  // the folded constants")
    lines.append(f"  wire signed [{tw - 1}:0] q = t >>> {tf};  // integer part: the shift")
    lines.append(f"  wire [{L}:0] idx = {{1'b0, t[{tf - 1}:{interp}]}};  // top {L} fraction bits: the table index")
    lines.append(f"  function [{P + 1}:0] lut(input [{L}:0] i);  // 2^(i / 2^{L}), {P} fractional bits")
    lines.append("    case (i)")
    lines += [f"      {lit(k, L + 1)}: lut = {lit(v, P + 2)};" for k, v in enumerate(table)]
    lines.append(f"      default: lut = {lit(0, P + 2)};")
    lines += ["    endcase", "  endfunction", f"  wire [{P + 1}:0] a = lut(idx);"]
    if interp:
        lines.append(f"  wire [{P + 1}:0] b = lut(idx + {lit(1, L + 1)});")
        lines.append(f"  wire [{interp - 1}:0] lo = t[{interp - 1}:0];  // interpolation weight")
        lines.append(f"  wire [{P + 1 + interp}:0] step = (b - a) * lo;")
        lines.append(f"  wire [{P + 1}:0] v = a + (step >> {interp});")
    else:
        lines.append(f"  wire [{P + 1}:0] v = a;")
    sa = bits(max(qmax, P + 1)) + 1
    w = max(ew, P + 2)
    lines += [f"  wire [{sa - 1}:0] lsh = q[{sa - 1}:0];",
              f"  wire [{tw - 1}:0] nq = -q;",
              f"  wire [{sa - 1}:0] rsh = nq[{sa - 1}:0];",
              f"  wire [{w - 1}:0] vw = v;",
              f"  assign e = (q > {qmax}) ? {{{ew}{{1'b1}}}} : (q < -{P + 1}) ? {lit(0, ew)} :",
              "             (q >= 0) ? (vw << lsh) : (vw >> rsh);",
              "endmodule", ""]
    return "\n".join(lines)


def saturate(unit: Unit, src: str) -> str:
    """y = keep ? min(src, 2^out_bits - 1) : 0."""
    ob = unit.out_bits
    top = 2 ** ob - 1
    return (f"  assign y = keep ? (({src} > {lit(top, ob)}) ? {lit(top, ob)} : {src}[{ob - 1}:0]) : {lit(0, ob)};")


# ----------------------------------------------------------------------------------- the units
def _reciprocal_output(unit: Unit, ew: int) -> list[str]:
    rb, ob = unit.RB, unit.out_bits
    rw = rb - unit.P + 2
    pw = max(ew + rw, ob + 1 + rb - unit.out_frac)
    return [f"  // once per row: r = floor(2^{rb} / s) (0 for an empty row), then one multiply per key",
            f"  wire [{rb}:0] quo = {lit(2 ** rb, rb + 1)} / s;",
            f"  wire [{rw - 1}:0] r = (s == 0) ? {lit(0, rw)} : quo[{rw - 1}:0];",
            f"  wire [{pw - 1}:0] prod = e * r;",
            f"  wire [{pw - 1}:0] ysh = prod >> {rb - unit.out_frac};",
            saturate(unit, "ysh")]


def _softmax(unit: Unit) -> list[str]:
    ib, ew, sw = unit.in_bits, fixed.exp_width(unit), unit.SW
    return [f"module {unit.name} (input clk, input [1:0] op, input signed [{ib - 1}:0] x, input keep, "
            f"output [{unit.out_bits - 1}:0] y);",
            f"  reg signed [{ib - 1}:0] m;  // running max (pass 1)",
            f"  reg [{sw - 1}:0] s;  // sum of exponentials (pass 2)",
            "  reg any;",
            f"  wire signed [{ib}:0] d = x - m;  // <= 0 in passes 2 and 3",
            f"  wire [{ew - 1}:0] e;",
            f"  {unit.name}_exp u_exp (.d(d), .e(e));",
            "  always @(posedge clk) begin",
            "    case (op)",
            f"      2'd0: begin m <= {lit(0, ib)}; s <= {lit(0, sw)}; any <= 1'b0; end",
            "      2'd1: if (keep) begin if (!any || x > m) m <= x; any <= 1'b1; end",
            "      2'd2: if (keep) s <= s + e;",
            "      default: ;",
            "    endcase",
            "  end",
            *_reciprocal_output(unit, ew),
            "endmodule", ""]


def _softermax(unit: Unit) -> list[str]:
    ib, inf, ew, sw = unit.in_bits, unit.in_frac, fixed.exp_width(unit), unit.SW
    mw = ib - inf + 2
    dw = mw + inf + 1
    return [f"module {unit.name} (input clk, input [1:0] op, input signed [{ib - 1}:0] x, input keep, "
            f"output [{unit.out_bits - 1}:0] y);",
            f"  reg signed [{mw - 1}:0] m;  // running max, an integer (ceil of the inputs)",
            f"  reg [{sw - 1}:0] s;  // running sum of 2^(x - m)",
            "  reg any;",
            f"  wire signed [{ib}:0] nx = -x;",
            f"  wire signed [{ib}:0] fl = nx >>> {inf};",
            f"  wire signed [{mw - 1}:0] cx = -fl;  // ceil(x)",
            f"  wire signed [{mw - 1}:0] mn = (!any || cx > m) ? cx : m;",
            f"  wire signed [{mw - 1}:0] mref = (op == 2'd1) ? mn : m;",
            f"  wire signed [{dw - 1}:0] d = x - (mref <<< {inf});",
            f"  wire [{ew - 1}:0] e;",
            f"  {unit.name}_exp u_exp (.d(d), .e(e));",
            f"  wire [{mw - 1}:0] sh = mn - m;  // the max grew by sh: rescale the sum by a shift",
            f"  wire [{sw - 1}:0] scaled = (sh >= {sw}) ? {lit(0, sw)} : (s >> sh);",
            "  always @(posedge clk) begin",
            "    case (op)",
            f"      2'd0: begin m <= {lit(0, mw)}; s <= {lit(0, sw)}; any <= 1'b0; end",
            f"      2'd1: if (keep) begin m <= mn; s <= (any ? scaled : {lit(0, sw)}) + e; any <= 1'b1; end",
            "      default: ;",
            "    endcase",
            "  end",
            *_reciprocal_output(unit, ew),
            "endmodule", ""]


def _consmax(unit: Unit) -> list[str]:
    ib, ew, ow = unit.in_bits, fixed.exp_width(unit), unit.OW
    pw = max(ew, unit.out_bits + 1) + max(0, unit.out_frac - unit.P)
    shift = f">> {unit.P - unit.out_frac}" if unit.P >= unit.out_frac else f"<< {unit.out_frac - unit.P}"
    return [f"module {unit.name} (input signed [{ib - 1}:0] x, input keep, input signed [{ow - 1}:0] offset, "
            f"output [{unit.out_bits - 1}:0] y);",
            "  // no max, no sum, no divider, no multiply by 1/gamma: exp(x - beta) / gamma = 2^(x log2 e - offset)",
            f"  wire [{ew - 1}:0] e;",
            f"  {unit.name}_exp u_exp (.d(x), .offset(offset), .e(e));",
            f"  wire [{pw - 1}:0] ew = e;",
            f"  wire [{pw - 1}:0] ysh = ew {shift};",
            saturate(unit, "ysh"),
            "endmodule", ""]


def _relumax(unit: Unit) -> list[str]:
    ib, k = unit.in_bits, fixed.constants(unit)["K"]
    sh = unit.in_frac + unit.CF - unit.out_frac
    pw = max(ib + bits(k), unit.out_bits + 1 + sh)
    return [f"module {unit.name} (input signed [{ib - 1}:0] x, input keep, output [{unit.out_bits - 1}:0] y);",
            f"  wire [{ib - 1}:0] r = x[{ib - 1}] ? {lit(0, ib)} : x;  // relu",
            f"  wire [{pw - 1}:0] prod = r * {lit(k, bits(k))};  // / divisor as a constant multiply",
            f"  wire [{pw - 1}:0] ysh = prod >> {sh};",
            saturate(unit, "ysh"),
            "endmodule", ""]


def _sigmoidmax(unit: Unit) -> list[str]:
    ib, P, c = unit.in_bits, unit.P, fixed.constants(unit)
    zw = max(ib, bits(abs(c["B"])) + 1) + 1
    sh = P + unit.CF - unit.out_frac
    pw = max(P + 1 + bits(c["K"]), unit.out_bits + 1 + sh)
    return [f"module {unit.name} (input signed [{ib - 1}:0] x, input keep, output [{unit.out_bits - 1}:0] y);",
            f"  wire signed [{zw - 1}:0] z = x + {slit(c['B'], zw)};  // the bias (a constant)",
            f"  wire [{zw - 1}:0] az = z[{zw - 1}] ? -z : z;",
            f"  wire signed [{zw}:0] d = -$signed({{1'b0, az}});  // exp(-|z|) <= 1",
            f"  wire [{P}:0] e;",
            f"  {unit.name}_exp u_exp (.d(d), .e(e));",
            f"  wire [{P + 1}:0] den = {lit(2 ** P, P + 2)} + e;",
            f"  wire [{2 * P}:0] sp = {lit(2 ** (2 * P), 2 * P + 1)} / den;  // sigmoid(|z|), a divider per key",
            f"  wire [{P}:0] sig = z[{zw - 1}] ? ({lit(2 ** P, P + 1)} - sp[{P}:0]) : sp[{P}:0];",
            f"  wire [{pw - 1}:0] prod = sig * {lit(c['K'], bits(c['K']))};",
            f"  wire [{pw - 1}:0] ysh = prod >> {sh};",
            saturate(unit, "ysh"),
            "endmodule", ""]


def _polymax(unit: Unit) -> list[str]:
    ib, c = unit.in_bits, fixed.constants(unit)
    p = c["p"]
    nw = max(ib, bits(abs(c["X0"])) + 1) + 1
    nsh = unit.in_frac + unit.CFA - unit.out_frac
    psh = p * unit.in_frac + unit.CF - unit.out_frac
    nprod = max(nw + bits(c["KA"]), unit.out_bits + 1 + nsh)
    ppw = max(p * (ib - 1) + bits(c["KD"]), bits(c["Y0"])) + 1
    ppw = max(ppw, unit.out_bits + 1 + psh)
    power = " * ".join(["ux"] * p)
    return [f"module {unit.name} (input signed [{ib - 1}:0] x, input keep, output [{unit.out_bits - 1}:0] y);",
            f"  wire signed [{nw - 1}:0] dx = x - {slit(c['X0'], nw)};  // x - x0 (>= 0 where used)",
            f"  wire [{nprod - 1}:0] nprod = $unsigned(dx) * {lit(c['KA'], bits(c['KA']))};",
            f"  wire [{nprod - 1}:0] nsh = nprod >> {nsh};",
            f"  wire [{ib - 2}:0] ux = x[{ib - 2}:0];  // x >= 0 where used",
            f"  wire [{ppw - 1}:0] pprod = {power} * {lit(c['KD'], bits(c['KD']))} + {lit(c['Y0'], bits(c['Y0']))};",
            f"  wire [{ppw - 1}:0] psh = pprod >> {psh};",
            f"  wire [{max(nprod, ppw) - 1}:0] v = (x < {slit(c['X0'], nw)}) ? 0 : x[{ib - 1}] ? nsh : psh;",
            saturate(unit, "v"),
            "endmodule", ""]


def exp_input_width(unit: Unit) -> int:
    """Width of the signed exponent input d each unit hands its exponential."""
    if unit.variant == "softermax":
        return unit.in_bits + 3
    if unit.variant == "sigmoidmax":
        return max(unit.in_bits, bits(abs(fixed.constants(unit)["B"])) + 1) + 2
    if unit.variant == "consmax":
        return unit.in_bits
    return unit.in_bits + 1


def generate(unit: Unit) -> str:
    """The unit's Verilog: a header, its exponential (where it has one), then the top module."""
    head = [f"// {unit.name}: generated by hardware/verilog.py from {unit.to_dict()}",
            "// numerics: hardware/fixed.py (bit-exact model); do not edit by hand", "`default_nettype none", ""]
    body = []
    if unit.exp:
        body.append(exp_module(unit, f"{unit.name}_exp", exp_input_width(unit),
                                offset=unit.OW if unit.variant == "consmax" else 0))
    body += {"softmax": _softmax, "softermax": _softermax, "consmax": _consmax, "relumax": _relumax,
             "sigmoidmax": _sigmoidmax, "polymax": _polymax}[unit.variant](unit)
    return "\n".join(head + body) + "`default_nettype wire\n"


# ----------------------------------------------------------------------------------- test bench
def vector_fields(unit: Unit) -> list[tuple[str, int]]:
    """(port, width) packed into one test-vector word, most significant first."""
    f = [("op", 2)] if unit.variant in fixed.STREAMING else []
    f += [("keep", 1), ("x", unit.in_bits)]
    if unit.variant == "consmax":
        f += [("offset", unit.OW)]
    return f


def testbench(unit: Unit, n: int, vectors: str, outputs: str) -> str:
    """A bench that applies n packed vectors from `vectors` (hex), one per cycle, and writes y per cycle."""
    f = vector_fields(unit)
    width = sum(w for _, w in f)
    streaming = unit.variant in fixed.STREAMING
    decl = [f"  reg {'signed ' if p in ('x', 'offset') else ''}[{w - 1}:0] {p};" for p, w in f]
    ports = ", ".join(f".{p}({p})" for p, _ in f) + f", .y(y){', .clk(clk)' if streaming else ''}"
    clock = ["      clk = 1'b1; #1; clk = 1'b0; #1;"] if streaming else []
    return "\n".join([
        "`timescale 1ns/1ps", "module tb;", f"  reg [{width - 1}:0] mem [0:{n - 1}];", "  reg clk = 1'b0;", *decl,
        f"  wire [{unit.out_bits - 1}:0] y;", f"  {unit.name} dut ({ports});", "  integer i, fd;", "  initial begin",
        f'    $readmemh("{vectors}", mem);', f'    fd = $fopen("{outputs}", "w");',
        f"    for (i = 0; i < {n}; i = i + 1) begin",
        f"      {{{', '.join(p for p, _ in f)}}} = mem[i];", "      #1;", '      $fwrite(fd, "%h\\n", y);', *clock,
        "    end", "    $fclose(fd);", "    $finish;", "  end", "endmodule", ""])
