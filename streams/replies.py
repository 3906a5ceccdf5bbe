"""The bot's own words (replies that need no answer backend), in several languages.

Keyed by situation; ``reply_text`` falls back to English for a missing language or key variant.
"""

from __future__ import annotations

from typing import Any

_EN = {
    "help": (
        "I answer questions from your company's knowledge base, with numbered sources.\n\n"
        "Commands:\n- /reset: start a new conversation\n- /sources on|off: show or hide "
        "sources\n- /lang xx: reply language (e.g. /lang es)\n- /stop: stop messages\n"
        "- /start: resume\n- /forget: delete what I keep about this chat\n- /help: this message"
    ),
    "reset": "Done: this is a new conversation. Ask me anything.",
    "sources_on": "Sources will be listed under my answers.",
    "sources_off": "I will no longer list sources under my answers.",
    "lang_set": "Language set to {language}.",
    "stop": "You won't get messages from me anymore. Send /start to resume.",
    "start": "Welcome back! Ask me anything.",
    "forget": "I deleted this conversation and what I kept about you.",
    "greeting": "Hello! Ask me a question about your company's documents. Send /help for tips.",
    "thanks": "You're welcome!",
    "feedback_thanks": "Thanks for your feedback!",
    "feedback_prompt": "Was this answer helpful?",
    "media_voice": "I can't listen to voice messages yet; please type your question.",
    "media_sticker": "Nice sticker! Ask me a question whenever you're ready.",
    "media_location": "Thanks for the location, but I can only answer questions in text.",
    "media_contacts": "I can't use contact cards; please type your question.",
    "media_video": "I can't watch videos; please describe your question in text.",
    "media_image": "I can't read images yet; add a caption with your question.",
    "media_document": "I can't read attachments yet; add a caption with your question.",
    "media_other": "I can only answer text questions.",
    "unsupported": "Sorry, WhatsApp didn't let me see that message. Please send it as text.",
    "quota_user": "You're asking faster than I can answer. Please wait a minute and try again.",
    "quota_tenant_minute": (
        "We're receiving a lot of questions right now. Please try again in a minute."
    ),
    "quota_tenant_day": "We've reached today's question limit. Please try again tomorrow.",
    "answer_failed": (
        "Sorry, I couldn't reach the knowledge base right now. Please try again in a moment."
    ),
    "no_answer": "I couldn't find that in the documents.",
    "unknown_command": "I don't know that command. Send /help to see what I can do.",
}

_CATALOG: dict[str, dict[str, str]] = {
    "en": _EN,
    "es": {
        "help": "Respondo preguntas con la base de conocimiento de tu empresa, con fuentes "
        "numeradas.\n\nComandos: /reset, /sources on|off, /lang xx, /stop, /start, /forget, /help",
        "reset": "Listo: esta es una conversación nueva.",
        "sources_on": "Mostraré las fuentes bajo mis respuestas.",
        "sources_off": "Ya no mostraré las fuentes.",
        "lang_set": "Idioma cambiado a {language}.",
        "stop": "No recibirás más mensajes. Envía /start para volver.",
        "start": "¡Bienvenido de nuevo!",
        "forget": "Borré esta conversación y lo que guardaba sobre ti.",
        "greeting": "¡Hola! Hazme una pregunta sobre los documentos de tu empresa.",
        "thanks": "¡De nada!",
        "feedback_thanks": "¡Gracias por tu opinión!",
        "feedback_prompt": "¿Te sirvió esta respuesta?",
        "answer_failed": "Lo siento, no pude consultar la base de conocimiento.",
        "quota_user": "Estás preguntando muy rápido. Espera un minuto, por favor.",
        "quota_tenant_minute": "Recibimos muchas preguntas ahora. Inténtalo en un minuto.",
        "quota_tenant_day": "Alcanzamos el límite de preguntas de hoy. Inténtalo mañana.",
    },
    "pt": {
        "reset": "Pronto: esta é uma nova conversa.",
        "greeting": "Olá! Faça uma pergunta sobre os documentos da sua empresa.",
        "thanks": "De nada!",
        "feedback_thanks": "Obrigado pelo seu feedback!",
        "lang_set": "Idioma definido para {language}.",
        "answer_failed": "Desculpe, não consegui acessar a base de conhecimento agora.",
        "stop": "Você não receberá mais mensagens. Envie /start para voltar.",
    },
    "fr": {
        "reset": "C'est fait : nouvelle conversation.",
        "greeting": "Bonjour ! Posez-moi une question sur les documents de votre entreprise.",
        "thanks": "Avec plaisir !",
        "feedback_thanks": "Merci pour votre avis !",
        "lang_set": "Langue réglée sur {language}.",
        "answer_failed": "Désolé, je n'ai pas pu joindre la base de connaissances.",
        "stop": "Vous ne recevrez plus de messages. Envoyez /start pour reprendre.",
    },
    "de": {
        "reset": "Erledigt: ein neues Gespräch.",
        "greeting": "Hallo! Stellen Sie mir eine Frage zu den Dokumenten Ihres Unternehmens.",
        "thanks": "Gern geschehen!",
        "feedback_thanks": "Danke für Ihr Feedback!",
        "lang_set": "Sprache auf {language} gesetzt.",
        "answer_failed": "Die Wissensdatenbank ist gerade nicht erreichbar.",
        "stop": "Sie erhalten keine Nachrichten mehr. Senden Sie /start zum Fortsetzen.",
    },
    "ar": {
        "reset": "تم: هذه محادثة جديدة.",
        "greeting": "مرحبًا! اسألني عن مستندات شركتك.",
        "thanks": "على الرحب والسعة!",
        "feedback_thanks": "شكرًا على ملاحظاتك!",
        "lang_set": "تم ضبط اللغة على {language}.",
        "answer_failed": "عذرًا، تعذر الوصول إلى قاعدة المعرفة الآن.",
        "stop": "لن تصلك رسائل بعد الآن. أرسل ‎/start‎ للاستئناف.",
    },
}


def reply_text(key: str, lang: str | None, **fmt: Any) -> str:
    """The text for ``key`` in ``lang`` (base language of e.g. pt-BR), English otherwise."""
    base = (lang or "en").split("-")[0].lower()
    template = _CATALOG.get(base, {}).get(key) or _EN.get(key) or _EN["media_other"]
    return template.format(**fmt) if fmt else template


def keys() -> list[str]:
    return sorted(_EN)
