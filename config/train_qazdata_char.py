# a small character-level GPT on KazQAD's Kazakh passages, questions and answers;
# sized for one GPU (on a laptop CPU use the smaller quick-start flags in the README)

out_dir = 'out-qazdata-char'
eval_interval = 250  # frequent: a model this size overfits a corpus this small
eval_iters = 200
log_interval = 10

wandb_log = False
wandb_project = 'qazdata-char'
wandb_run_name = 'mini-gpt'

dataset = 'qazdata_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # up to 256 previous characters

n_layer = 6
n_head = 6
n_embd = 384
mlp_ratio = 2  # MLPs twice as wide as the model, not GPT-2's 4x: about the same loss in less time (BENCHMARKS.md)
dropout = 0.2

# Muon for the block matrices (the default from scratch), AdamW for the rest; these rates were tuned
# on the CPU quick start (BENCHMARKS.md), not on this 6x384 GPU size
muon_lr = 0.01
learning_rate = 3e-3  # AdamW's
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 3e-4  # learning_rate / 10
beta2 = 0.99  # a bit higher than 0.95: few tokens per iteration
warmup_iters = 100
