"""``HubSharingMixin``: ``save_pretrained`` / ``push_to_hub`` of every hf_dynamic model type also write the remote code
(+ ``auto_map``) and the model card (docs/architecture.md, "## Sharing")."""

from __future__ import annotations

import os
from pathlib import Path

from .model_card import CARD_NAME, TEMPLATE_CARD_MARK, card_tags, write_model_card
from .remote_code import auto_map, model_type_package, write_remote_code

_UNSET = object()


class HubSharingMixin:
    """Put first in the bases of a model type's ``PreTrainedModel``: ``save_pretrained`` also writes the remote
    code (+ ``auto_map``) and the model card; ``push_to_hub`` uploads them (the card replaces transformers' generic
    template, never a card the Hub repository already has)."""

    def _sharing_auto_map(self) -> dict[str, str]:
        return auto_map(model_type_package(type(self)))

    def _write_sharing_files(self, folder, replace_template_card: bool = False) -> None:
        write_remote_code(folder, type(self), self.config)
        card = Path(folder, CARD_NAME)
        overwrite = replace_template_card and card.is_file() and TEMPLATE_CARD_MARK in card.read_text("utf-8")
        write_model_card(folder, self.config, overwrite=overwrite, tags=card_tags(card) if overwrite else ())

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, plus the remote code, ``auto_map`` and a model card
        (:mod:`hf_dynamic.sharing`).

        ``auto_map`` is set on the config only while transformers writes ``config.json``: afterwards the config is as
        before (a config that had no ``auto_map`` has none again; transformers' Auto classes test ``name in
        config.auto_map`` whenever the attribute exists, so a left-behind ``None`` breaks
        ``from_pretrained(folder, config=model.config)``)."""
        previous = vars(self.config).get("auto_map", _UNSET)
        self.config.auto_map = {**(previous if isinstance(previous, dict) else {}), **self._sharing_auto_map()}
        try:
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            if previous is _UNSET:
                del self.config.auto_map
            else:
                self.config.auto_map = previous
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            self._write_sharing_files(save_directory)
        return result

    # A private seam of transformers, kept: `PushToHubMixin._upload_modified_files(working_dir, repo_id,
    # files_timestamps, ...)` is the upload step of both `push_to_hub` and `save_pretrained(push_to_hub=True)`.
    # No public hook sits between "files written" and "upload": `push_to_hub` saves the Hub's card (or its template)
    # over ours after `save_pretrained`, and `save_pretrained(push_to_hub=True)` uploads before returning. Replacing
    # this step by `huggingface_hub.upload_folder` would mean re-implementing both (repo creation, tags, commit
    # options). tests/sharing/test_sharing.py::test_transformers_upload_step_is_where_we_hook fails if it changes.
    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # The files must be there (and newer than the timestamps save_pretrained took) before transformers lists what
        # to upload.
        self._write_sharing_files(working_dir, replace_template_card=True)
        return super()._upload_modified_files(working_dir, *args, **kwargs)
