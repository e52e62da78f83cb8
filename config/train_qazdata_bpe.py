# a small GPT on KazQAD with the Kazakh byte-level BPE (data/qazdata_bpe/prepare.py);
# the quick-start model size, trains in minutes on a 2-core CPU:
# python train.py config/train_qazdata_bpe.py --device=cpu

out_dir = 'out-qazdata-bpe'
eval_interval = 250
eval_iters = 20
log_interval = 10

dataset = 'qazdata_bpe'
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # 64 tokens: about 250 characters of Kazakh

n_layer = 4
n_head = 4
n_embd = 128
mlp_ratio = 4.0  # GPT-2's: the char quick start's 2 lost more loss here than it saved time (BENCHMARKS.md)
dropout = 0.1  # 140k training tokens: the Muon recipe overfits them without it (BENCHMARKS.md)

# Muon at train.py's default rate (0.02) for the block matrices, AdamW for the rest (the 8192 x 128
# embedding is most of this model): 0.01 and 3e-3, the char quick start's rates, overfit sooner
learning_rate = 1e-3  # AdamW's
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
