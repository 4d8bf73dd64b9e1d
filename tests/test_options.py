"""Option files: every bundled one validates; misspelt keys, wrong types and bad network options are
refused with the file, the key and a did-you-mean; numeric strings are numbers; test.py's parser."""
import copy
from pathlib import Path

import pytest
import yaml

from diffir.option_schema import OptionError, validate_options
from diffir.options import build_arg_parser, load_yaml, parse_options

REPO = Path(__file__).resolve().parents[1]
ALL_OPTION_FILES = sorted((REPO / "options").rglob("*.yml"))
DEMO_TRAIN = REPO / "options" / "demo" / "train_demo_DiffIRS1_x4.yml"


def test_the_bundled_option_files_are_all_found():
    assert len(ALL_OPTION_FILES) >= 50  # the glob must not silently match nothing


@pytest.mark.parametrize("path", ALL_OPTION_FILES, ids=lambda p: str(p.relative_to(REPO / "options")))
def test_every_bundled_option_file_validates(path):
    opt = load_yaml(str(path))
    before = copy.deepcopy(opt)
    validate_options(opt, is_train="train" in opt, source=str(path))
    assert opt == before  # valid files come out unchanged


def demo():
    return load_yaml(str(DEMO_TRAIN))


@pytest.mark.parametrize(("edit", "where", "suggestion"), [
    (lambda o: o.__setitem__("vall", o.pop("val")), "vall", "'val'"),
    (lambda o: o.__setitem__("loger", o.pop("logger")), "loger", "'logger'"),
    (lambda o: o["train"].__setitem__("total_iters", o["train"].pop("total_iter")), "train.total_iters",
     "'total_iter'"),
    (lambda o: o["logger"].__setitem__("print_frq", 10), "logger.print_frq", "'print_freq'"),
    (lambda o: o["val"].__setitem__("val_freqq", 10), "val.val_freqq", "'val_freq'"),
    (lambda o: o["network_g"].__setitem__("num_blockz", [1, 1, 1, 1]), "network_g.num_blockz", "'num_blocks'"),
    (lambda o: o["datasets"]["train"].__setitem__("batch_size_per_gpuu", 2), "datasets.train.batch_size_per_gpuu",
     "'batch_size_per_gpu'"),
    (lambda o: o["train"]["pixel_opt"].__setitem__("loss_wieght", 1.0), "train.pixel_opt.loss_wieght",
     "'loss_weight'"),
    (lambda o: o["train"]["optim_g"].__setitem__("weight_decy", 0), "train.optim_g.weight_decy", "'weight_decay'"),
    (lambda o: o["network_g"].__setitem__("type", "DifIRS1"), "network_g.type=DifIRS1", "'DiffIRS1'"),
])
def test_misspelt_keys_are_named_with_a_suggestion(edit, where, suggestion):
    opt = demo()
    edit(opt)
    with pytest.raises(OptionError) as err:
        validate_options(opt, is_train=True, source="my.yml")
    message = str(err.value)
    assert message.startswith(f"my.yml: {where}: unknown option") and f"did you mean {suggestion}" in message


def test_numeric_strings_are_numbers_and_non_numbers_are_refused():
    opt = demo()
    opt["train"]["optim_g"]["lr"] = "1e-3"  # YAML 1.1 reads 1e-3 as a string
    opt["train"]["total_iter"] = "4e2"
    opt["train"]["pixel_opt"]["loss_weight"] = "0.5"
    validate_options(opt, is_train=True)
    assert opt["train"]["optim_g"]["lr"] == 0.001 and isinstance(opt["train"]["optim_g"]["lr"], float)
    assert opt["train"]["total_iter"] == 400 and isinstance(opt["train"]["total_iter"], int)
    assert opt["train"]["pixel_opt"]["loss_weight"] == 0.5

    for section, key, value, expected in (("optim_g", "lr", "abc", "a number"),
                                          (None, "total_iter", 10.5, "an integer"),
                                          (None, "ema_decay", True, "a number")):
        opt = demo()
        node = opt["train"][section] if section else opt["train"]
        node[key] = value
        with pytest.raises(OptionError, match=f"train.{section + '.' if section else ''}{key}: expected {expected}, "
                                              f"got {value!r}"):
            validate_options(opt, is_train=True)


def test_wrong_types_of_plain_options_are_refused():
    opt = demo()
    opt["datasets"]["train"]["use_hflip"] = "yes"
    with pytest.raises(OptionError, match=r"datasets.train.use_hflip: expected true or false, got 'yes'"):
        validate_options(opt, is_train=True)
    opt = demo()
    opt["val"] = 5
    with pytest.raises(OptionError, match=r"val: expected a mapping, got 5"):
        validate_options(opt, is_train=True)


def test_parse_options_validates_before_anything_is_created(tmp_path):
    opt = demo()
    opt["train"]["total_iters"] = opt["train"].pop("total_iter")
    path = tmp_path / "typo.yml"
    path.write_text(yaml.safe_dump(opt))
    with pytest.raises(OptionError, match="total_iters"):
        parse_options(True, ["-opt", str(path), "--root", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["typo.yml"]


def test_test_parser_offers_no_training_flags(capsys):
    help_text = build_arg_parser(is_train=False).format_help()
    assert "--auto_resume" not in help_text and "--debug" not in help_text
    with pytest.raises(SystemExit):
        build_arg_parser(is_train=False).parse_args(["-opt", "x.yml", "--auto_resume"])
    assert "unrecognized arguments: --auto_resume" in capsys.readouterr().err
    assert build_arg_parser(is_train=True).parse_args(["-opt", "x.yml", "--auto_resume"]).auto_resume


def test_logger_save_format_is_checked_up_front():
    opt = {"name": "x", "model_type": "DiffIRS1Model", "logger": {"save_format": "safetensors"}}
    validate_options(dict(opt), is_train=True, source="ok.yml")
    with pytest.raises(OptionError, match=r"bad.yml: logger.save_format: expected one of pth, safetensors, got 'npz'"):
        validate_options({**opt, "logger": {"save_format": "npz"}}, is_train=True, source="bad.yml")


@pytest.mark.parametrize("key", ["root", "experiments_root", "models", "training_states", "log", "visualization",
                                 "results_root"])
def test_folder_paths_set_from_root_and_name_are_refused(key):
    opt = demo()
    opt["path"][key] = "/big/disk"  # parse_options would overwrite it (or never read it): refused, not ignored
    with pytest.raises(OptionError, match=rf"my.yml: path.{key}: set from --root and name.*"
                                          r"experiments go to <root>/experiments/<name>"):
        validate_options(opt, is_train=True, source="my.yml")


def test_ignore_resume_networks_only_names_what_diffir_never_resumes():
    opt = demo()
    opt["path"]["ignore_resume_networks"] = "network_S1"  # as the bundled stage-two files: S1 is never resumed
    validate_options(opt, is_train=True)
    opt["path"]["ignore_resume_networks"] = ["network_g"]
    with pytest.raises(OptionError, match=r"path.ignore_resume_networks: diffir resumes the trained networks"):
        validate_options(opt, is_train=True)


def test_the_discriminator_optimiser_type_is_required_everywhere():
    import torch

    from diffir.models.adversarial import AdversarialTraining
    opt = demo()
    opt["train"]["optim_d"] = {"lr": 1e-4}
    with pytest.raises(OptionError, match=r"train.optim_d.type: missing"):
        validate_options(opt, is_train=True)
    adversarial = AdversarialTraining.__new__(AdversarialTraining)  # the options as they reach the model
    adversarial.optim_opt, adversarial.net_d = {"lr": 1e-4}, torch.nn.Linear(1, 1)
    with pytest.raises(KeyError, match="type"):
        adversarial.build_optimizer(lambda name, params, **kw: torch.optim.Adam(params, **kw))
