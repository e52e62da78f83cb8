# step 2 of `make qa`: the pretrained model (out-qa-pretrain) finetuned on question-answering
# examples (data/qazdata_qa/prepare.py): the loss counts answer tokens only

out_dir = 'out-qa'
init_from = 'out-qa-pretrain'  # an earlier run of this repo: its best.pt, new optimizer state
eval_interval = 200
eval_iters = 20
log_interval = 20

dataset = 'qazdata_qa'
gradient_accumulation_steps = 1
batch_size = 8
block_size = 256

dropout = 0.0
muon_lr = 0.01
learning_rate = 3e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 50

device = 'cpu'
compile = False
