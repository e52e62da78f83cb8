# The commands that set up a fresh machine and run something:
#   make quickstart   install, prepare KazQAD char-level, train on CPU (replacing an earlier quick start), sample
#   make qa           install, prepare KazQAD, pretrain on its passages, finetune on question answering,
#                     print EM/F1 on the held-out questions, closed-book, reading and open-domain
#                     (BM25 retrieval), in about 20 minutes on a 2-core CPU; SEED=N for another seed of
#                     the whole recipe, QA_OUT=folder for its runs (bench.py --qa_seeds runs several),
#                     DTYPE=float32 (here and for quickstart) to run in float32 on a CPU whose default is bf16
#   make test         install, lint (ruff), run the test suite
# Offline, point the data at a local copy first, e.g.
#   export KAZQAD_SOURCE=../shared/kazqad TIKTOKEN_CACHE_DIR=../shared/tiktoken
PYTHON ?= python3
SEED ?= 0
QA_OUT ?= out-qa
DTYPE ?=
DTYPE_FLAG = $(if $(DTYPE),--dtype=$(DTYPE))

install:
	$(PYTHON) -m pip install -q -r requirements.txt

quickstart: install
	$(PYTHON) data/qazdata_char/prepare.py
	$(PYTHON) train.py config/train_qazdata_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0 --overwrite $(DTYPE_FLAG)
	$(PYTHON) sample.py --out_dir=out-qazdata-char --device=cpu
	$(PYTHON) sample.py --out_dir=out-qazdata-char --device=cpu --start="Амазонка бассейні картада қайда орналасқан?:" --num_samples=1 --max_new_tokens=100

qa: install
	$(PYTHON) data/qazdata_bpe/prepare.py --vocab_size=2048
	$(PYTHON) train.py config/train_qa_pretrain.py --overwrite --seed=$(SEED) --out_dir=$(QA_OUT)-pretrain $(DTYPE_FLAG)
	$(PYTHON) data/qazdata_qa/prepare.py --block_size=384 --cloze=20 --question_loss --seed=$(SEED)
	$(PYTHON) train.py config/finetune_qa.py --overwrite --seed=$(SEED) --init_from=$(QA_OUT)-pretrain --out_dir=$(QA_OUT) $(DTYPE_FLAG)
	$(PYTHON) eval_qa.py --out_dir=$(QA_OUT) --device=cpu --modes=closed_book,reading,open $(DTYPE_FLAG)

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest

.PHONY: install quickstart qa test
