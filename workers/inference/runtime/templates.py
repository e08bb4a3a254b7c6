"""InternVL chat templates (all "MPT" style) and the prompt text they produce."""

from __future__ import annotations

from dataclasses import dataclass

INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    system_template: str
    system_message: str
    user_role: str
    assistant_role: str
    sep: str

    @property
    def stop_token(self) -> str:
        return self.sep.strip()

    def render(self, turns: list[tuple[str, str | None]], *, system_message: str | None = None) -> str:
        """System part, then each (user, assistant) turn; ``None`` leaves the assistant open.

        An empty earlier answer emits the role with no message and no separator (upstream does).
        """
        system = self.system_message if system_message is None else system_message
        parts = [self.system_template.format(system=system), self.sep]
        for user, assistant in turns:
            for role, message in ((self.user_role, user), (self.assistant_role, assistant)):
                parts.append(role + message + self.sep if message else role)
        return "".join(parts)


_IM_START = "<|im_start|>"

TEMPLATES: dict[str, ChatTemplate] = {
    template.name: template
    for template in (
        ChatTemplate(
            "Hermes-2",
            f"{_IM_START}system\n{{system}}",
            INTERNVL2_SYSTEM,
            f"{_IM_START}user\n",
            f"{_IM_START}assistant\n",
            "<|im_end|>",
        ),
        ChatTemplate(
            "internlm2-chat",
            f"{_IM_START}system\n{{system}}",
            INTERNVL2_SYSTEM,
            f"{_IM_START}user\n",
            f"{_IM_START}assistant\n",
            "<|im_end|>",
        ),
        ChatTemplate("phi3-chat", "<|system|>\n{system}", INTERNVL2_SYSTEM, "<|user|>\n", "<|assistant|>\n", "<|end|>"),
        ChatTemplate(
            "internvl2_5",
            f"{_IM_START}system\n{{system}}",
            INTERNVL2_5_SYSTEM,
            f"{_IM_START}user\n",
            f"{_IM_START}assistant\n",
            "<|im_end|>\n",
        ),
    )
}


class UnknownTemplate(KeyError):
    pass


def get_template(name: str) -> ChatTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise UnknownTemplate(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}") from None
