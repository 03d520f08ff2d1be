"""transformers.Trainer trains a PEMN PeftModel (scores only) and saves it as a PEMN adapter."""

import torch
from torch.utils.data import Dataset

import hf_dynamic


class Digits(Dataset):
    def __init__(self, n=64):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=generator)
        self.y = torch.randint(0, 10, (n,), generator=generator)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_trainer_steps_update_only_the_scores_and_save_a_pemn_adapter(tmp_path, tiny_net):
    from peft import PeftModel, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = get_peft_model(tiny_net(), hf_dynamic.PEMNConfig(target_modules=["conv", "fc1", "fc2"], strategy="rp"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks_before = model.base_model.model.fc1.pemn_mask("default")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=16, learning_rate=0.5,
        optim="sgd", report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, lr_scheduler_type="constant")
    trainer = Trainer(model=model, args=args, train_dataset=Digits())
    result = trainer.train()
    assert result.global_step == 6 and torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {n for n in before if ".pemn_scores." in n}
    assert not torch.equal(model.base_model.model.fc1.pemn_mask("default"), masks_before)

    trainer.save_model(str(tmp_path / "adapter"))
    model.eval()
    x = Digits().x[:8]
    assert torch.equal(PeftModel.from_pretrained(tiny_net(), str(tmp_path / "adapter"))(x), model(x))
