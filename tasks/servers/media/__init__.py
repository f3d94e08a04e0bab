"""Media servers (OCR, text-to-speech, speech-to-text, images): they run in the ``media`` environment
(``infra/envs/media.txt``), which has no torch, so nothing here imports the rest of ``tasks`` beyond
``tasks.formatter.files`` and ``tasks.servers.media`` itself. The deploy engines that start them are in
``tasks/deploy/media.py`` and ``tasks/deploy/tts.py``.
"""
