"""Benchmark files of the shapes world in the official layouts: VQA questions/annotations and COCO captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vilaray.synth.writers import Sink


@dataclass(frozen=True)
class VqaImage:
    image_id: int
    image: bytes
    questions: tuple[
        dict, ...
    ]  # question, question_id, question_type, answer_type, answers, multiple_choice_answer


def vqa_file_name(subtype: str, image_id: int) -> str:
    return f"shapes_{subtype}_{image_id:012d}.png"


def write_vqa(
    sink: Sink, kind: str, rel_dir: str, subtype: str, items: Sequence[VqaImage], info: dict
) -> None:
    questions, annotations = [], []
    for item in items:
        sink.write_bytes(f"{rel_dir}/images/{vqa_file_name(subtype, item.image_id)}", item.image)
        for q in item.questions:
            questions.append(
                {"image_id": item.image_id, "question": q["question"], "question_id": q["question_id"]}
            )
            answers = [
                {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                for k, a in enumerate(q["answers"])
            ]
            annotations.append(
                {
                    "question_id": q["question_id"],
                    "image_id": item.image_id,
                    "question_type": q["question_type"],
                    "answer_type": q["answer_type"],
                    "multiple_choice_answer": q["multiple_choice_answer"],
                    "answers": answers,
                }
            )
    header = {"info": info, "task_type": "Open-Ended", "data_type": "shapes", "data_subtype": subtype}
    sink.write_json(f"{rel_dir}/questions.json", {**header, "license": {}, "questions": questions}, kind)
    sink.write_json(
        f"{rel_dir}/annotations.json",
        {
            "info": info,
            "data_type": "shapes",
            "data_subtype": subtype,
            "license": {},
            "annotations": annotations,
        },
        kind,
    )
    sink.image_roots[kind] = f"{rel_dir}/images"


@dataclass(frozen=True)
class CaptionImage:
    image_id: int
    image: bytes
    captions: tuple[str, ...]
    size: int


def write_coco_captions(
    sink: Sink, kind: str, rel_dir: str, subtype: str, items: Sequence[CaptionImage], info: dict
) -> None:
    images, annotations = [], []
    for item in items:
        file_name = vqa_file_name(subtype, item.image_id)
        sink.write_bytes(f"{rel_dir}/images/{file_name}", item.image)
        images.append({"id": item.image_id, "file_name": file_name, "height": item.size, "width": item.size})
        for text in item.captions:
            annotations.append({"id": len(annotations) + 1, "image_id": item.image_id, "caption": text})
    obj = {"info": info, "licenses": [], "type": "captions", "images": images, "annotations": annotations}
    sink.write_json(f"{rel_dir}/captions_{subtype}.json", obj, kind)
    sink.image_roots[kind] = f"{rel_dir}/images"
