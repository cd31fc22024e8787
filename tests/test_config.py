"""Tests for seq2seq.config: recipes, typed --set overrides, validation messages, TOML dump, diff.

The recipe files double as the manual, so they are tested too: every recipe builds, and every
key of every config dataclass is shown with a comment in some recipe.
"""

import dataclasses
import re
import tomllib
import typing
from pathlib import Path

import pytest

from seq2seq.config import Config, check_consistency, diff, dump_toml, from_dict, load, to_dict
from seq2seq.errors import Seq2SeqError

RECIPES_DIR = Path(__file__).parent.parent / "recipes"
RECIPES = sorted(RECIPES_DIR.glob("*.toml"))


def all_keys(cls: type = Config, prefix: str = "") -> dict[str, dataclasses.Field]:
    """Every dotted leaf key of the config tree -> its dataclass field."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(all_keys(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = f
    return out


def get(cfg: Config, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- recipes


def test_recipes_exist():
    assert RECIPES, f"no recipes found in {RECIPES_DIR}"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_builds_config_and_model(recipe):
    from seq2seq.model import build_model

    cfg = load(recipe)
    assert from_dict(to_dict(cfg)) == cfg  # the form checkpoints carry rebuilds the same config
    check_consistency(cfg)
    model = build_model(cfg.model, 64, 64)  # the recipe's model settings construct a model
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_sets_only_known_keys_with_their_own_values(recipe):
    """What the file says is what the loaded config holds (no key silently dropped)."""
    raw = tomllib.loads(recipe.read_text())
    cfg = load(recipe)

    sections = {"data", "tokenizer", "model", "model.encoder", "model.decoder", "model.attention",
                "train", "decode"}
    checked = 0

    def walk(node: dict, prefix: str):
        nonlocal checked
        for k, v in node.items():
            key = prefix + k
            if key in sections:
                walk(v, f"{key}.")
            elif key in ("data.train", "data.valid", "data.test"):  # file paths: relative to the recipe
                here = lambda pair: tuple(str(recipe.parent.absolute() / f) for f in pair)  # noqa: E731
                want = {n: here(pair) for n, pair in v.items()} if key == "data.test" else here(v)
                got = get(cfg, key)
                assert ({n: tuple(pair) for n, pair in got.items()} if key == "data.test" else got) == want, key
                checked += 1
            elif key != "data.data_dir" or v == "":  # a non-empty data_dir is resolved against the recipe
                assert get(cfg, key) == (tuple(v) if isinstance(v, list) else v), key
                checked += 1

    walk(raw, "")
    assert checked > 0


# A line `key = value  # comment`, possibly commented out itself (keys that only make sense
# with another setting, such as data.train for corpus = "files").
_KEY_LINE = re.compile(r"^\s*(?:#\s*)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>[^#]*?)\s*#\s*(?P<comment>\S.*)$")
_SECTION = re.compile(r"^\s*\[(?P<name>[A-Za-z0-9_.]+)\]\s*(#.*)?$")


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key -> its comment, for every `key = value  # comment` line in a recipe."""
    out, section = {}, ""
    for line in text.splitlines():
        if m := _SECTION.match(line):
            section = m["name"] + "."
            continue
        m = _KEY_LINE.match(line)
        if not m or not section:
            continue
        try:  # the value must be a real TOML value, so prose like "# a = b" is not counted
            tomllib.loads(f"v = {m['value']}")
        except tomllib.TOMLDecodeError:
            continue
        out[section + m["key"]] = m["comment"]
    return out


def test_documented_keys_parser():
    text = '[a]\nx = 1  # one\n# y = [1, 2]  # two\nz = 3\n# Override --set w=3 # no\n[b.c]\nx = "s" # three\n'
    assert documented_keys(text) == {"a.x": "one", "a.y": "two", "b.c.x": "three"}


def test_every_config_key_is_documented_in_a_recipe():
    """Project rule: the recipes are the manual, so every key appears with a comment."""
    documented = {}
    for recipe in RECIPES:
        documented.update(documented_keys(recipe.read_text()))
    missing = [k for k in all_keys() if k not in documented]
    assert not missing, f"keys without a commented line in any recipe: {', '.join(missing)}"


_DEFAULT_AFTER = re.compile(r"\(default:?\s+(?P<v>\[[^\]]*\]|\"[^\"]*\"|[^\s;,)]+)")
_DEFAULT_BEFORE = re.compile(r"\"(?P<v>[^\"]+)\"\s+\(default[,)]")


def test_defaults_stated_in_recipe_comments_match_the_code():
    """A comment such as `(default 0.2)` or `"gnmt" (default)` must not drift from the dataclass."""
    keys, checked = all_keys(), 0
    for recipe in RECIPES:
        for key, comment in documented_keys(recipe.read_text()).items():
            f = keys.get(key)
            if f is None:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            stated = None
            if m := _DEFAULT_AFTER.search(comment):
                try:
                    stated = tomllib.loads(f"v = {m['v']}")["v"]
                except tomllib.TOMLDecodeError:
                    continue  # prose such as "(default: halve on stalled val BLEU)"
            elif m := _DEFAULT_BEFORE.search(comment):
                stated = m["v"]
            else:
                continue
            stated = tuple(stated) if isinstance(stated, list) else stated
            assert stated == default, f"{recipe.name}: {key} comment says default {stated!r}, code has {default!r}"
            checked += 1
    assert checked >= 20  # the parser really found the stated defaults


# ---------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("item, key, expected", [
    ("model.encoder.layers=3", "model.encoder.layers", 3),
    ("train.lr=0.01", "train.lr", 0.01),
    ("train.lr=2", "train.lr", 2.0),                      # an int given for a float key
    ("train.lr=5e-4", "train.lr", 5e-4),
    ("model.decoder.tie_embeddings=false", "model.decoder.tie_embeddings", False),
    ("model.encoder.bidirectional = false", "model.encoder.bidirectional", False),
    ("data.src=fr", "data.src", "fr"),                    # bare word -> string
    ('data.tgt="cs"', "data.tgt", "cs"),
    ("model.attention.type=general", "model.attention.type", "general"),
    ("train.betas=[0.8, 0.95]", "train.betas", (0.8, 0.95)),
    ("train.betas=[0, 0.5]", "train.betas", (0.0, 0.5)),
    ('data.test_splits=["val", "test_2016_flickr"]', "data.test_splits", ("val", "test_2016_flickr")),
])
def test_override_changes_value_and_keeps_type(item, key, expected):
    cfg = load(RECIPES_DIR / "multi30k_de_en.toml", [item])
    value = get(cfg, key)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, tuple):
        assert all(type(v) is type(e) for v, e in zip(value, expected))
    assert diff(load(RECIPES_DIR / "multi30k_de_en.toml"), cfg) == [key]


def test_overrides_apply_in_order_and_without_a_recipe():
    cfg = load(None, ["model.decoder.layers=3", "model.decoder.layers=5", "decode.beam=2"])
    assert cfg.model.decoder.layers == 5
    assert cfg.decode.beam == 2
    assert diff(Config(), cfg) == ["model.decoder.layers", "decode.beam"]


def test_override_beats_recipe_value(tmp_path):
    recipe = write(tmp_path / "r.toml", "[model.encoder]\nlayers = 4\nhidden = 128\n")
    cfg = load(recipe, ["model.encoder.layers=1"])
    assert (cfg.model.encoder.layers, cfg.model.encoder.hidden) == (1, 128)


def test_load_none_gives_defaults():
    assert load(None) == Config()


@pytest.mark.parametrize("item, message", [
    ("model.encoder.layers=two", "model.encoder.layers must be an integer, got 'two'"),
    ("model.encoder.layers=2.5", "model.encoder.layers must be an integer, got 2.5"),
    ("model.encoder.layers=true", "model.encoder.layers must be an integer, got True"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    ("train.lr=true", "train.lr must be a number, got True"),
    ("tokenizer.joint=1", "tokenizer.joint must be true or false, got 1"),
    ("tokenizer.joint=yes", "tokenizer.joint must be true or false, got 'yes'"),
    ("data.src=7", "data.src must be a string, got 7"),
    ("train.betas=0.9", "train.betas must be a list, got 0.9"),
    ("train.betas=[0.9]", "train.betas must be two numbers in [0, 1), got [0.9]"),
    ("train.betas=[1, 0]", "train.betas must be two numbers in [0, 1), got [1.0, 0.0]"),
    ('train.betas=[0.9, "x"]', "train.betas[1] must be a number, got 'x'"),
    ("data.test=3", "data.test must be a table, got 3"),
])
def test_type_errors_name_key_and_value(item, message):
    with pytest.raises(Seq2SeqError) as e:
        load(None, [item])
    assert str(e.value) == message


@pytest.mark.parametrize("item, message", [
    ("model.encoder.layers=0", "model.encoder.layers must be >= 1, got 0"),
    ("tokenizer.vocab_size=15", "tokenizer.vocab_size must be >= 16, got 15"),
    ("train.lr=0", "train.lr must be > 0.0, got 0.0"),
    ("train.label_smoothing=0.95", "train.label_smoothing must be <= 0.9, got 0.95"),
    ("tokenizer.character_coverage=1.5", "tokenizer.character_coverage must be <= 1.0, got 1.5"),
    ("model.decoder.residual_from=1", "model.decoder.residual_from must be >= 2, got 1"),
    ("decode.max_len_b=-1", "decode.max_len_b must be >= 0, got -1"),
])
def test_range_errors(item, message):
    with pytest.raises(Seq2SeqError) as e:
        load(None, [item])
    assert str(e.value) == message


def test_range_bounds_are_inclusive_where_documented():
    cfg = load(None, ["model.encoder.layers=1", "train.label_smoothing=0.9", "tokenizer.vocab_size=16",
                      "tokenizer.character_coverage=1.0", "train.clip_norm=0"])
    assert (cfg.model.encoder.layers, cfg.train.label_smoothing, cfg.tokenizer.vocab_size) == (1, 0.9, 16)


@pytest.mark.parametrize("item, key", [
    ("model.attention.type=cosine", "model.attention.type"),
    ("tokenizer.type=wordpiece", "tokenizer.type"),
    ("data.corpus=wmt", "data.corpus"),
    ("train.device=tpu", "train.device"),
    ("model.decoder.cell=rnn", "model.decoder.cell"),
])
def test_bad_choice_lists_valid_choices(item, key):
    f = all_keys()[key]
    with pytest.raises(Seq2SeqError) as e:
        load(None, [item])
    msg = str(e.value)
    assert msg.startswith(f"{key} must be one of")
    assert all(c in msg for c in f.metadata["choices"])
    assert repr(item.split("=")[1]) in msg


def test_unknown_override_key_names_key_lists_valid_keys_and_suggests():
    with pytest.raises(Seq2SeqError) as e:
        load(None, ["model.encoder.layrs=3"])
    msg = str(e.value)
    assert "unknown key model.encoder.layrs" in msg
    assert "did you mean model.encoder.layers?" in msg
    for key in all_keys():
        if key.startswith("model.encoder."):
            assert key in msg
    assert "model.decoder.layers" not in msg  # only the keys of that section


def test_unknown_override_key_without_close_match_has_no_suggestion():
    with pytest.raises(Seq2SeqError) as e:
        load(None, ["train.zzzzzz=1"])
    assert "unknown key train.zzzzzz" in str(e.value)
    assert "did you mean" not in str(e.value)
    assert "train.batch_tokens" in str(e.value)


@pytest.mark.parametrize("item, unknown, valid", [
    ("modle.encoder.layers=3", "modle", ["data", "tokenizer", "model", "train", "decode"]),
    ("model.encodr.layers=3", "model.encodr", ["model.encoder", "model.decoder", "model.attention"]),
    ("model.share_embeddings.x=1", "model.share_embeddings", ["model.encoder"]),
])
def test_unknown_override_section(item, unknown, valid):
    with pytest.raises(Seq2SeqError) as e:
        load(None, [item])
    msg = str(e.value)
    assert f"unknown key {unknown}" in msg
    assert all(v in msg for v in valid)


def test_override_without_equals_sign():
    with pytest.raises(Seq2SeqError, match="KEY=VALUE"):
        load(None, ["model.encoder.layers"])


def test_unknown_key_in_recipe_file(tmp_path):
    recipe = write(tmp_path / "r.toml", "[model.decoder]\nlayers = 2\nhiden = 128\n")
    with pytest.raises(Seq2SeqError) as e:
        load(recipe)
    msg = str(e.value)
    assert "unknown key model.decoder.hiden" in msg
    assert "did you mean model.decoder.hidden?" in msg
    assert "model.decoder.tie_embeddings" in msg


def test_unknown_section_in_recipe_file(tmp_path):
    recipe = write(tmp_path / "r.toml", "[training]\nlr = 0.1\n")
    with pytest.raises(Seq2SeqError) as e:
        load(recipe)
    msg = str(e.value)
    assert "unknown key training" in msg
    assert "did you mean train?" in msg
    assert "valid keys: data, tokenizer, model, train, decode" in msg


def test_section_given_as_a_value(tmp_path):
    recipe = write(tmp_path / "r.toml", "train = 3\n")
    with pytest.raises(Seq2SeqError, match="^train must be a table, got 3$"):
        load(recipe)


def test_invalid_toml_names_the_file(tmp_path):
    recipe = write(tmp_path / "broken.toml", "[model.encoder]\nlayers = = 2\n")
    with pytest.raises(Seq2SeqError) as e:
        load(recipe)
    assert str(recipe) in str(e.value)
    assert "invalid TOML" in str(e.value)
    assert "\n" not in str(e.value)


def test_non_utf8_recipe_names_the_file(tmp_path):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('[data]\nsrc = "d\xe9"\n'.encode("latin-1"))
    with pytest.raises(Seq2SeqError) as e:
        load(recipe)
    assert str(recipe) in str(e.value)


def test_missing_recipe_names_the_file(tmp_path):
    with pytest.raises(Seq2SeqError) as e:
        load(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(e.value)


# ---------------------------------------------------------------------------- cross-key checks


@pytest.mark.parametrize("items, fragment", [
    (["model.attention.type=dot", "model.encoder.hidden=256", "model.decoder.hidden=128"],
     "model.attention.type = 'dot' needs model.encoder.hidden == model.decoder.hidden (got 256 and 128)"),
    (["model.decoder.tie_embeddings=true", "model.decoder.embedding=128", "model.decoder.hidden=256"],
     "model.decoder.tie_embeddings needs model.decoder.embedding == model.decoder.hidden (got 128 and 256)"),
    (["model.share_embeddings=true", "tokenizer.joint=false"],
     "model.share_embeddings needs tokenizer.joint = true"),
    (["model.share_embeddings=true", "model.encoder.embedding=128", "model.decoder.embedding=256"],
     "model.share_embeddings needs model.encoder.embedding == model.decoder.embedding"),
    (["model.encoder.hidden=255"], "model.encoder.hidden must be even for a bidirectional encoder, got 255"),
    (["decode.beam=2", "decode.nbest=3"], "decode.nbest must be <= decode.beam (2), got 3"),
    (["data.corpus=files"], "data.train must be [src_path, tgt_path] when data.corpus = 'files'"),
    (["data.corpus=files", 'data.train=["a", "b"]'],
     "data.valid must be [src_path, tgt_path] when data.corpus = 'files'"),
    (["data.corpus=files", 'data.train=["a", "b"]', 'data.valid=["c", "d"]', 'data.test={t = ["e"]}'],
     "data.test.t must be [src_path, tgt_path]"),
])
def test_consistency_errors(items, fragment):
    with pytest.raises(Seq2SeqError) as e:
        load(None, items)
    assert fragment in str(e.value)


@pytest.mark.parametrize("items", [
    ["model.attention.type=dot", "model.encoder.hidden=128", "model.decoder.hidden=128"],
    ["model.attention.type=general", "model.encoder.hidden=256", "model.decoder.hidden=128"],
    ["model.decoder.tie_embeddings=true", "model.decoder.embedding=128", "model.decoder.hidden=128"],
    ["model.share_embeddings=true"],
    ["model.encoder.hidden=255", "model.encoder.bidirectional=false"],
    ["data.corpus=files", 'data.train=["a", "b"]', 'data.valid=["c", "d"]'],
])
def test_consistent_combinations_load(items):
    load(None, items)


def test_from_dict_checks_like_load():
    with pytest.raises(Seq2SeqError, match="unknown key decode.bean"):
        from_dict({"decode": {"bean": 3}})
    assert from_dict({"decode": {"beam": 3}}).decode.beam == 3


def test_config_is_frozen():
    cfg = load(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.encoder.layers = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------- data paths


FILES_RECIPE = """
[data]
corpus = "files"
train = ["corpus/train.de", "corpus/train.en"]
valid = ["corpus/valid.de", "/abs/valid.en"]
test = { t1 = ["corpus/t1.de", "corpus/t1.en"] }
data_dir = "m30k"
"""


def test_relative_data_paths_resolve_against_recipe_dir(tmp_path, monkeypatch):
    recipe = write(tmp_path / "recipes" / "files.toml", FILES_RECIPE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    d = load(recipe).data
    base = tmp_path / "recipes"
    assert d.train == (str(base / "corpus/train.de"), str(base / "corpus/train.en"))
    assert d.valid == (str(base / "corpus/valid.de"), "/abs/valid.en")  # absolute kept
    assert d.test == {"t1": [str(base / "corpus/t1.de"), str(base / "corpus/t1.en")]}
    assert d.data_dir == str(base / "m30k")


def test_paths_from_a_relative_recipe_path_are_absolute(tmp_path, monkeypatch):
    """The resolved config is stored in checkpoints and config.toml, so its paths must not
    depend on the directory that training was started from."""
    write(tmp_path / "recipes" / "files.toml", FILES_RECIPE)
    monkeypatch.chdir(tmp_path)
    d = load(Path("recipes/files.toml")).data
    for p in (*d.train, *d.valid, *d.test["t1"], d.data_dir):
        assert Path(p).is_absolute(), p
    assert Path(d.train[0]) == tmp_path / "recipes" / "corpus" / "train.de"


def test_home_in_recipe_paths_is_expanded_not_joined(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    recipe = write(tmp_path / "r.toml", '[data]\ndata_dir = "~/multi30k"\n')
    assert load(recipe).data.data_dir == str(tmp_path / "home" / "multi30k")


def test_empty_data_dir_stays_empty(tmp_path):
    recipe = write(tmp_path / "r.toml", '[data]\ndata_dir = ""\n')
    assert load(recipe).data.data_dir == ""


# ---------------------------------------------------------------------------- dump and diff


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_dump_toml_round_trips_recipes(recipe, tmp_path):
    cfg = load(recipe)
    dumped = write(tmp_path / "elsewhere" / "config.toml", dump_toml(cfg))
    assert load(dumped) == cfg


def test_dump_toml_round_trips_non_defaults(tmp_path, monkeypatch):
    """Strings with quotes and backslashes, floats in exponent form, lists, the test table,
    files-corpus paths; the dump is loaded from another directory than the recipe's."""
    write(tmp_path / "recipes" / "files.toml", FILES_RECIPE)
    monkeypatch.chdir(tmp_path)
    cfg = load(Path("recipes/files.toml"), [
        "train.lr=3e-05", "train.min_lr=0", "train.betas=[0.85, 0.999]", "tokenizer.joint=false",
        "model.encoder.cell=gru", "decode.beam=1", "train.max_minutes=1.5",
        'data.src="we\\"ird\\\\lang"', "model.decoder.dropout=0.0",
    ])
    assert cfg.data.src == 'we"ird\\lang'
    dumped = write(tmp_path / "exp" / "config.toml", dump_toml(cfg))
    back = load(dumped)
    assert back == cfg
    assert diff(cfg, back) == []


def test_dump_is_complete_toml():
    parsed = tomllib.loads(dump_toml(load(None)))
    flat = set()

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict) and f"{prefix}{k}" != "data.test":
                walk(v, f"{prefix}{k}.")
            else:
                flat.add(prefix + k)

    walk(parsed, "")
    assert flat == set(all_keys())


def test_diff_lists_changed_keys_in_order():
    a = load(None)
    b = load(None, ["train.lr=0.5", "model.decoder.layers=2", "data.src=fr"])
    assert diff(a, b) == ["data.src", "model.decoder.layers", "train.lr"]
    assert diff(b, a) == ["data.src", "model.decoder.layers", "train.lr"]
    assert diff(a, a) == []


def test_diff_ignores_sections():
    a = load(None)
    b = load(None, ["decode.beam=2", "decode.nbest=2", "train.seed=7"])
    assert diff(a, b, ignore_sections=("decode",)) == ["train.seed"]
    assert diff(a, b, ignore_sections=("decode.beam",)) == ["train.seed", "decode.nbest"]


@pytest.mark.parametrize("before, after", [
    ({}, {"t": ["a", "b"]}),
    ({"t": ["a", "b"]}, {}),
    ({"t": ["a", "b"]}, {"t": ["a", "c"]}),
    ({"t": ["a", "b"]}, {"u": ["a", "b"]}),
])
def test_diff_sees_changes_in_the_test_table(before, after):
    base = ["data.corpus=files", 'data.train=["a", "b"]', 'data.valid=["c", "d"]']

    def cfg(test):
        items = ", ".join(f'{k} = ["{v[0]}", "{v[1]}"]' for k, v in test.items())
        return load(None, base + [f"data.test={{{items}}}"])

    assert diff(cfg(before), cfg(after)) == ["data.test"]
    assert diff(cfg(after), cfg(before)) == ["data.test"]
