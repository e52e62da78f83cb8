# GPT-2 (124M) shape on Kazakh Wikipedia (data/kkwiki/prepare.py, 32k Kazakh BPE), one GPU:
# python data/kkwiki/prepare.py && python train.py config/train_kkwiki.py
# then finetune on KazQAD question answering and evaluate open-domain (README: "Open-domain QA").
# Untested on a GPU here (no hub access, no GPU in the session that wrote it): a starting point.

out_dir = 'out-kkwiki'
wandb_log = False
wandb_project = 'kkwiki'
wandb_run_name = 'gpt2-124M-kkwiki'

dataset = 'kkwiki'
# 16 batch * 1024 block * 32 micro-steps = 524,288 tokens per step
batch_size = 16
block_size = 1024
gradient_accumulation_steps = 32

# Kazakh Wikipedia is a few hundred million tokens: 5000 steps are a few epochs of it
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 200

eval_interval = 500
eval_iters = 100
log_interval = 10

muon_lr = 0.02
learning_rate = 6e-4
min_lr = 6e-5
weight_decay = 1e-1
