"""Checks before any model work: the trigger is in the prompt, the concept's name and trigger are new."""
import pytest

from continual_concepts.core.memory import ConceptRecord, ContinualMemory
from continual_concepts.core.validate import check_trigger_in_prompt, concepts_to_replace, prior_prompt_lines


@pytest.mark.parametrize("prompt", ["a photo of sks", "sks", "a photo of sks, on a table", "(sks) dog"])
def test_trigger_standing_as_a_word_passes(prompt):
    check_trigger_in_prompt(prompt, "sks")


@pytest.mark.parametrize("prompt,trigger", [("a photo of a dog", "sks"), ("a photo of sksx", "sks"),
                                            ("a photo of xsks", "sks"), ("a photo", " ")])
def test_trigger_missing_from_prompt_is_one_error(prompt, trigger):
    with pytest.raises(ValueError, match="trigger|prompt"):
        check_trigger_in_prompt(prompt, trigger)


def test_prior_prompts_are_lines_without_the_trigger():
    assert prior_prompt_lines("", "sks") is None and prior_prompt_lines(" \n \n", "sks") is None
    assert prior_prompt_lines(" a photo of a dog \n\na sksx mug\n", "sks") == ["a photo of a dog", "a sksx mug"]
    with pytest.raises(ValueError, match="prior_prompts: line 2 contains the trigger 'sks'"):
        prior_prompt_lines("a photo of a dog\na photo of sks", "sks")


def memory():
    m = ContinualMemory("fp")
    m.concepts.append(ConceptRecord("dog", "sks", "a sks", {}, {}))
    m.concepts.append(ConceptRecord("mug", "zwx", "a zwx", {}, {}))
    return m


def test_new_name_and_trigger_pass_and_no_memory_passes():
    assert concepts_to_replace(memory(), "cat", "qpr", False) == []
    assert concepts_to_replace(None, "cat", "sks", False) == []


@pytest.mark.parametrize("name,trigger,clash", [("dog", "qpr", ["dog"]), ("cat", "zwx", ["mug"]),
                                                ("dog", "zwx", ["dog", "mug"])])
def test_taken_name_or_trigger_is_an_error_unless_replace(name, trigger, clash):
    with pytest.raises(ValueError, match="name/trigger: the memory already has concept"):
        concepts_to_replace(memory(), name, trigger, False)
    assert [c.name for c in concepts_to_replace(memory(), name, trigger, True)] == clash


def test_empty_name_is_an_error():
    with pytest.raises(ValueError, match="name"):
        concepts_to_replace(None, " ", "sks", False)
