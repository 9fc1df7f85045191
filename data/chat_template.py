"""Chat template: a conversation of system/user/assistant messages as token ids, with the mask of the
tokens supervised fine-tuning trains on, and the prompt a model continues to answer.

    from data.chat_template import ChatTemplate
    template = ChatTemplate(tokenizer)
    ids, mask = template.encode_conversation([{"role": "user", "content": "Who is there?"},
                                              {"role": "assistant", "content": "Nay, answer me."}])
    prompt = template.encode_prompt([{"role": "user", "content": "Who is there?"}])  # ends in the assistant header
    # generate from `prompt` until a token of template.stop_token_ids or a text of template.stop_strings

Two layouts, chosen by what the tokenizer offers:

  special tokens  the tokenizer's `special_tokens` (data/tokenizer.py) holds <|system|>, <|user|>,
                  <|assistant|> and <|end|>: every turn is <|role|> content <|end|>. The role and end ids
                  are inserted directly, never by encoding their text, and content is encoded as ordinary
                  text, so a user who types "<|assistant|>" cannot forge a turn.
  plain text      otherwise (char, byte, tiktoken without the chat tokens): "System: ", "User: " and
                  "Assistant: " headers, each turn ended by END: the end-of-text token where the tokenizer
                  has one (gpt2), else the text "\\n\\n" (char, byte). With a text END, a blank line inside
                  an answer ends the turn when generating, and a char tokenizer must know every character
                  of the headers and of END (a UserError names the missing one).

The mask is True on the assistant's content and the END after it (what to say and when to stop) and
False on system and user turns and on every role header.
"""
from __future__ import annotations

from errors import UserError, unknown_name_message

ROLES = ("system", "user", "assistant")
TRAINED_ROLE = "assistant"
ROLE_TOKENS = {role: f"<|{role}|>" for role in ROLES}  # names of the chat special tokens
END_TOKEN = "<|end|>"
EOT_TOKEN = "<|endoftext|>"
TEXT_HEADERS = {"system": "System: ", "user": "User: ", "assistant": "Assistant: "}  # plain-text layout
TEXT_END = "\n\n"  # plain-text end of a turn, for tokenizers without an end-of-text token


def check_messages(messages) -> None:
    """A UserError (one line, no file or line number: callers add theirs) unless `messages` is a
    non-empty list of {"role": one of ROLES, "content": non-empty str}."""
    if not isinstance(messages, list) or not messages:
        raise UserError("'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not {"role", "content"} <= set(m):
            got = f"keys {sorted(m)}" if isinstance(m, dict) else type(m).__name__
            raise UserError(f"message {i} must be an object with 'role' and 'content', got {got}")
        if m["role"] not in ROLES:
            raise UserError(f"message {i}: " + unknown_name_message("role", str(m["role"]), ROLES))
        if not isinstance(m["content"], str) or not m["content"]:
            raise UserError(f"message {i} ({m['role']}): 'content' must be a non-empty string")


class ChatTemplate:
    """Encodes conversations for one tokenizer; `layout` is "special_tokens" or "text" (module docstring)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        special = tokenizer.special_tokens  # declared by data.tokenizer.Tokenizer
        needed = [*ROLE_TOKENS.values(), END_TOKEN]
        if all(name in special for name in needed):
            self.layout = "special_tokens"
            self.headers = {role: [special[name]] for role, name in ROLE_TOKENS.items()}
            self.end = [special[END_TOKEN]]
            self.stop_token_ids: list[int] = [special[END_TOKEN]] + ([special[EOT_TOKEN]] if EOT_TOKEN in special else [])
            self.stop_strings: list[str] = []
            return
        self.layout = "text"
        self.headers = {role: self._encode_marker(text) for role, text in TEXT_HEADERS.items()}
        eot = tokenizer.eot_token
        if eot is not None:
            self.end, self.stop_token_ids, self.stop_strings = [eot], [eot], []
        else:
            self.end, self.stop_token_ids, self.stop_strings = self._encode_marker(TEXT_END), [], [TEXT_END]

    def _encode_marker(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        except UserError:  # a char vocabulary without one of the marker's characters
            missing = sorted({c for c in text if not self._encodes(c)})
            raise UserError(f"the plain-text chat template needs the characters {missing!r} (in {text!r}), which "
                            f"this {self.tokenizer.name} tokenizer's vocabulary lacks; fine-tune a "
                            "model whose training text has them, or one with a byte or tiktoken tokenizer") from None

    def _encodes(self, char: str) -> bool:
        try:
            self.tokenizer.encode(char)
            return True
        except UserError:
            return False

    def _turn(self, message: dict) -> tuple[list[int], list[bool]]:
        head = self.headers[message["role"]]
        body = self.tokenizer.encode(message["content"]) + self.end
        return head + body, [False] * len(head) + [message["role"] == TRAINED_ROLE] * len(body)

    def encode_conversation(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """ids of the whole conversation and a same-length mask, True where the token is trained
        (assistant content and the end-of-turn marker after it), False elsewhere."""
        check_messages(messages)
        ids, mask = [], []
        for m in messages:
            turn_ids, turn_mask = self._turn(m)
            ids += turn_ids
            mask += turn_mask
        return ids, mask

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        """The conversation so far followed by the assistant header: what the model continues."""
        ids = self.encode_conversation(messages)[0] if messages else []
        return ids + self.headers[TRAINED_ROLE]
