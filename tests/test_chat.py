"""chat.py: slash commands, replies equal to model.generate (greedy and seeded sampling) with the KV cache
kept, reused and rolled back across turns, history cropping, streaming of split characters, clean exits."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

import chat
import train
from data.tokenizer import ByteTokenizer
from errors import UserError

from conftest import ROOT

SYSTEM = "Speak."


@contextmanager
def one_thread():
    """Models this small run one token at a time; thread hand-offs would cost more than the maths."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(autouse=True)
def _plain_output(monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE"):  # rich would colour even a StringIO
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def runs(char_data, tmp_path_factory):
    """runs/main (block 128, 10 steps), runs/other (block 64, 1 step) and runs/notes (no checkpoint)."""
    root = tmp_path_factory.mktemp("chat_runs")
    common = ["--preset", "debug", "--dataset", str(char_data), "--device", "cpu", "--eval_interval", "1000"]
    with one_thread():
        train.main(common + ["--out_dir", str(root / "main"), "--max_iters", "10", "--learning_rate", "3e-3",
                             "--block_size", "128"])
        train.main(common + ["--out_dir", str(root / "other"), "--max_iters", "1", "--block_size", "64"])
    (root / "notes").mkdir()
    return root


def drive(run_dir, lines, *flags, stdin=None) -> tuple[chat.ChatRepl, str]:
    """Run chat.main on `lines` of input; (the REPL, everything it printed)."""
    out = io.StringIO()
    stdin = stdin or io.StringIO("".join(line + "\n" for line in lines))
    repl = chat.main(["--out_dir", str(run_dir), "--device", "cpu", *flags], stdin=stdin, stdout=out)
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: plain text
    return repl, text


def expected_reply(session: chat.ChatSession, messages: list[dict], max_new_tokens: int, **sampling) -> str:
    """model.generate's continuation of the prompt (fresh prefill), cut at the template's stop marker."""
    prompt = session.template.encode_prompt(messages)
    budget = min(max_new_tokens, session.block_size - len(prompt))
    sampling = sampling or {"temperature": 0.0}
    y = session.model.generate(torch.tensor([prompt]), budget, vocab_limit=session.tokenizer.vocab_size,
                               **sampling)[0, len(prompt):].tolist()
    stops = [i for i, t in enumerate(y) if t in session.template.stop_token_ids]
    text = session.tokenizer.decode(y[:stops[0]] if stops else y)
    for stop in session.template.stop_strings:
        text = text.split(stop)[0]
    return text


def check_turns(session: chat.ChatSession, max_new_tokens: int) -> int:
    """Every assistant message of the history equals the greedy reply to the messages before it."""
    n = 0
    for i, m in enumerate(session.history):
        if m["role"] == "assistant":
            assert m["content"] == expected_reply(session, session.history[:i], max_new_tokens)
            n += 1
    return n


def test_greedy_replies_equal_generate_with_cache_reuse_and_rollback(runs):
    lines = ["/temp 0", "/max 12", "Who?", "Nay.", "Stand!"]
    repl, out = drive(runs / "main", lines)
    s = repl.session
    assert [m["role"] for m in s.history] == ["user", "assistant"] * 3 and "outgrew" not in out
    assert check_turns(s, 12) == 3
    # the third prompt ran only what the cache lacked: the second prompt and reply were reused
    second, third = s.template.encode_prompt(s.history[:3]), s.template.encode_prompt(s.history[:5])
    assert s.reused > len(second) and s.reused + s.prefilled == len(third)
    for m in s.history[1::2]:
        assert f"assistant> {m['content']}\n" in out  # streamed in full

    # after /reset the cache is rolled back to the prefix the new prompt shares ("User: ")
    repl, out = drive(runs / "main", lines + ["/reset", "Go."])
    s = repl.session
    assert s.history[0]["content"] == "Go." and len(s.history) == 2
    assert s.reused == len(s.tokenizer.encode("User: "))
    assert check_turns(s, 12) == 1


def test_sampled_turns_equal_generate_with_the_same_generator_state(runs):
    """Sampling is exact too, through cache reuse across turns, a cropped history and a reset."""
    repl, _ = drive(runs / "main", [], "--temperature", "1.0", "--top_k", "0", "--max_new_tokens", "20",
                    "--system", SYSTEM)
    s = repl.session
    for message in ["Who?", "Nay, answer me.", "Stand and unfold yourself.", "/reset", "Long live the king!"]:
        if message == "/reset":
            s.reset()
            continue
        state = s.generator.get_state()
        prompt, _ = s.add_user(message)
        reply, _ = s.answer(prompt)
        want = expected_reply(s, s.history[:-1], 20, temperature=1.0,
                              generator=torch.Generator().set_state(state))
        assert reply == want and len(set(reply)) > 3
    # a stop token id (the special-token layout's <|end|>) ends the reply before it
    stop_char = reply[len(reply) // 2]
    s.template.stop_token_ids = s.tokenizer.encode(stop_char)
    s.generator.set_state(state)
    again, why = s.generate_reply(s.template.encode_prompt(s.history[:-1]))
    assert again == reply[:reply.index(stop_char)] and why == "stop"

    # through main: --seed, /topk and /topp reach the sampler
    lines = ["/max 10", "/topk 20", "/topp 0.9", "Who?"]
    first, _ = drive(runs / "main", lines, "--seed", "5")
    want = expected_reply(first.session, first.session.history[:1], 10, temperature=0.8, top_k=20, top_p=0.9,
                          generator=torch.Generator().manual_seed(5))
    assert first.session.history[1]["content"] == want
    other, _ = drive(runs / "main", lines, "--seed", "6")
    assert other.session.history[1]["content"] != want


def test_history_is_cropped_keeping_the_system_message(runs):
    line = "To be, or not to be, that is the question."
    repl, out = drive(runs / "main", ["/temp 0", "/max 8", line, line + " Ay.", line + " No.", line + " So."],
                      "--system", SYSTEM)
    s = repl.session
    assert out.count("(the conversation outgrew the model's 128-token context: the oldest turns are dropped "
                     "from now on (the system message stays))") == 1
    assert s.history[0] == {"role": "system", "content": SYSTEM}
    assert [m["content"] for m in s.history if m["role"] == "user"][-1] == line + " So."
    assert len(s.history) < 1 + 2 * 4 and len(s.template.encode_prompt(s.history)) <= 128
    assert check_turns(s, 8) >= 1  # the reply after cropping is exact too (cache rolled back to the system turn)


def test_messages_that_cannot_be_sent_keep_the_session(runs):
    repl, out = drive(runs / "main", ["/max 8", "x" * 200, "snow \u2603", "/temp 0", "Hi"], "--system", SYSTEM)
    s = repl.session
    prompt = len(s.template.encode_prompt([s.history[0], {"role": "user", "content": "x" * 200}]))
    assert (f"error: the prompt needs {prompt} tokens with only the system message and your last message; the "
            "model's context is 128 tokens, 8 of them kept for the reply: write less, or lower /max\n") in out
    assert "error: character '\u2603' is not in this data set's char vocabulary" in out
    assert [m["role"] for m in s.history] == ["system", "user", "assistant"] and s.history[1]["content"] == "Hi"


def test_setting_commands_and_bad_values(runs):
    lines = ["/temp 0.5", "/topk 7", "/topp 0.9", "/max 20", "/max", "/temp abc", "/topk -1", "/topp 0",
             "/max 0", "/tmep 1", "/reset now", "/temp 1 2"]
    repl, out = drive(runs / "main", lines)
    assert repl.session.settings == chat.Settings(temperature=0.5, top_k=7, top_p=0.9, max_new_tokens=20)
    assert out.count("max_new_tokens = 20\n") == 2  # set, then shown by /max without a value
    for error in ["/temp needs a number >= 0 (0: greedy), got 'abc'",
                  "/topk needs an integer >= 0 (0: every token), got '-1'",
                  "/topp needs a number in (0, 1], or off, got '0'",
                  "/max needs an integer from 1 to 1,000,000, got '0'",
                  "unknown command '/tmep'; did you mean '/temp'? valid: /help, /max, /model, /models, /params, "
                  "/quit, /reset, /temp, /topk, /topp",
                  "/reset takes no argument",
                  "/temp needs a number >= 0 (0: greedy), got '1 2'"]:
        assert f"\nerror: {error}\n" in out
    repl, _ = drive(runs / "main", ["/topp 0.5", "/topp off", "/topk 0"])
    assert repl.session.settings.top_p is None and repl.session.settings.top_k == 0


def test_params_help_and_reset(runs):
    repl, out = drive(runs / "main", ["/temp 0", "/max 4", "Hi", "/params", "/help", "/reset"], "--system", SYSTEM)
    s = repl.session
    assert s.history == [{"role": "system", "content": SYSTEM}] and "history cleared\n" in out
    rows = {"temperature": "0.0", "top_k": "50", "top_p": "off", "max_new_tokens": "4",
            "parameters": f"{s.model.num_params():,}", "block_size": "128", "n_layer": "2",
            "other config": "none (GPTConfig defaults)", "history": "3 messages"}
    for key, value in rows.items():
        assert re.search(rf"^{key} +{re.escape(value)}", out, re.M), key
    for name, (arg, _) in chat.COMMANDS.items():
        assert re.search(rf"^/{name}{' ' + arg if arg else ''} ", out, re.M), name


def test_models_and_model_switch(runs):
    lines = ["/models", "/temp 0", "/max 4", "Hi", "/model nope", "/model other", "/params",
             f"/model {runs / 'main'}"]
    repl, out = drive(runs / "main", lines[:-1])
    assert re.search(r"^\* +main +10 ", out, re.M) and re.search(r"^ +other +1 ", out, re.M)
    assert "notes" not in out
    assert "error: /model run directory nope not found" in out
    s = repl.session
    assert s.run_dir == runs / "other" and s.block_size == 64 and s.history == []
    assert re.search(r"^block_size +64", out, re.M)
    repl, _ = drive(runs / "main", lines)
    assert repl.session.run_dir == runs / "main" and repl.session.block_size == 128


def test_quit_eof_and_ctrl_c_end_cleanly(runs):
    repl, out = drive(runs / "main", ["/quit", "/temp 0.1"])
    assert repl.session.settings.temperature == 0.8 and out.endswith("you> /quit\nbye\n")
    _, out = drive(runs / "main", [])
    assert out.endswith("you> \nbye\n")

    class CtrlC(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    _, out = drive(runs / "main", [], stdin=CtrlC())
    assert out.endswith("you> \nbye\n")


def test_cli_errors(runs):
    with pytest.raises(UserError, match=r"^--temperature needs a number >= 0 \(0: greedy\), got '-1'$"):
        chat.main(["--out_dir", str(runs / "main"), "--temperature", "-1"])
    with pytest.raises(UserError, match="^--system is empty"):
        chat.main(["--out_dir", str(runs / "main"), "--system", " "])
    with pytest.raises(UserError, match="run directory .* not found"):
        chat.main(["--out_dir", str(runs / "nope")], stdin=io.StringIO(""), stdout=io.StringIO())


def test_reply_text_streams_split_characters_and_holds_back_stop_strings():
    tok = ByteTokenizer()
    reply = chat.ReplyText(tok, ["\n\n"])
    pieces = []
    for b in "h\u00e9 \u2603 a\nb\n\nUser: more".encode():
        pieces.append(reply.add(b))
        if reply.stopped:
            break
    assert "".join(pieces) == "h\u00e9 \u2603 a\nb" and all("\ufffd" not in p for p in pieces)
    assert pieces[1:3] == ["", "\u00e9"]  # the first byte of é waits for the second
    assert pieces[-4:] == ["", "\nb", "", ""]  # each "\n" waits: it may begin the stop string, which ends it
    reply = chat.ReplyText(tok, ["\n\n"])
    assert [reply.add(b) for b in b"ok\n"] == ["o", "k", ""] and reply.flush() == "\n" and not reply.stopped


@pytest.mark.slow
def test_chat_cli_transcript(runs):
    r = subprocess.run([sys.executable, "chat.py", "--out_dir", str(runs / "main"), "--device", "cpu",
                        "--temperature", "0", "--max_new_tokens", "6"], input="Who is there?\n/quit\n",
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "you> Who is there?\nassistant> " in r.stdout and r.stdout.endswith("you> /quit\nbye\n")


def test_non_finite_and_huge_settings_are_refused(runs):
    lines = ["/temp nan", "/temp inf", "/topk -5", "/topp nan", "/max 1e12", "/max 1000000000000"]
    repl, out = drive(runs / "main", lines)
    assert repl.session.settings == chat.Settings()
    for error in ["/temp needs a number >= 0 (0: greedy), got 'nan'",
                  "/temp needs a number >= 0 (0: greedy), got 'inf'",
                  "/topk needs an integer >= 0 (0: every token), got '-5'",
                  "/topp needs a number in (0, 1], or off, got 'nan'",
                  "/max needs an integer from 1 to 1,000,000, got '1e12'",
                  "/max needs an integer from 1 to 1,000,000, got '1000000000000'"]:
        assert f"\nerror: {error}\n" in out
    with pytest.raises(UserError, match=r"^--top_p needs a number in \(0, 1\], or off, got 'nan'$"):
        chat.main(["--out_dir", str(runs / "main"), "--top_p", "nan"])
