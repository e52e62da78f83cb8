# GPT-2 (124M) on OpenWebText: 8 GPUs on one node,
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = True
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

# 12 batch * 1024 block * 40 micro-steps (5 per GPU) = 491,520 tokens per step, about 0.5M
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# 600k steps: about 300B tokens
max_iters = 600000
lr_decay_iters = 600000

eval_interval = 1000
eval_iters = 200
log_interval = 10

weight_decay = 1e-1

# optimizer: Muon for the block matrices (the default from scratch) at nanochat's matrix rate,
# AdamW at nanoGPT's rate for the tied embedding, LayerNorms and biases. A starting point taken
# from the published recipes, untested on a GPU here; --optimizer=adamw gives nanoGPT's run.
muon_lr = 0.02
muon_momentum = 0.95
learning_rate = 6e-4
# the architecture is train.py's from-scratch default, the speedrun's choices: rotary positions, ReLU
# squared MLPs, QK-norm (also untested on a GPU here); GPT-2's own: --position_encoding=learned
# --mlp_activation=gelu --qk_norm=False
