# Two commands set everything up on a machine with only python3:
#   make run    serve the app on http://127.0.0.1:8501 with the embedded digits zoo
#   make test   run the whole test suite (unit, Streamlit AppTest, browser end-to-end)
# Both create .venv and (re)install requirements.txt only when it changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.requirements.sha256
PORT   ?= 8501

.PHONY: run test venv bench bench-real report build-zoo clean

venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@want=$$(sha256sum requirements.txt | cut -d' ' -f1); \
	have=$$(cat $(STAMP) 2>/dev/null); \
	if [ "$$want" != "$$have" ]; then \
	  echo "Installing requirements.txt into $(VENV) (first time: about 2 minutes)..."; \
	  if $(PY) -m pip install --disable-pip-version-check -q -r requirements.txt > $(VENV)/install.log 2>&1; then \
	    echo "$$want" > $(STAMP); \
	  else \
	    grep -v "is ignored" $(VENV)/install.log | tail -n 30; echo "pip install failed (full log: $(VENV)/install.log)"; exit 1; \
	  fi; \
	fi

run: venv
	$(PY) -m ui.serve --server.port $(PORT)  # streamlit run app.py on 127.0.0.1, heavy imports done first

test: venv
	$(PY) -m pytest

bench: venv
	$(PY) -m benchmarks.merge_speed

bench-real: venv
	$(PY) -m benchmarks.real_scale

report: venv
	$(PY) -m analysis report --zoo digits --out reports/digits

build-zoo: venv
	$(PY) -m zoo build --out assets/zoo
	$(PY) -m ui.seed --zoo digits --out assets/zoo/digits-results.sqlite  # its shipped results

clean:
	rm -rf $(VENV) .pytest_cache
