"""Where a stored path leads (webapp.media), without an app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from webapp.media import OutsideMediaFolder, image_file, media_path


@pytest.fixture
def media(tmp_path) -> Path:
    folder = tmp_path / "media"
    (folder / "products").mkdir(parents=True)
    (folder / "products" / "a.jpg").write_bytes(b"photo")
    (tmp_path / "secret.jpg").write_bytes(b"not for the public")
    return folder


def test_no_stored_path_is_no_file(media):
    assert media_path(None, media) is None
    assert media_path("", media) is None
    assert image_file(None, media) is None


def test_a_relative_path_is_a_file_under_the_media_folder(media):
    expected = Path(os.path.realpath(media), "products", "a.jpg")
    assert media_path("products/a.jpg", media) == expected
    assert media_path("products/./x/../a.jpg", str(media)) == expected
    # The file need not exist: whoever reads it handles its absence.
    assert media_path("products/missing.jpg", media) == expected.with_name("missing.jpg")


def test_an_absolute_path_is_a_catalogue_photo_read_in_place(media, tmp_path):
    photo = str(tmp_path / "catalogue" / "1163.jpg")
    assert media_path(photo, media) == Path(photo)
    assert image_file(photo, media) == Path(photo)
    # Where only files we stored are meant, it is refused.
    with pytest.raises(OutsideMediaFolder):
        media_path(photo, media, allow_absolute=False)
    assert image_file(photo, media, allow_absolute=False) is None


@pytest.mark.parametrize(
    "stored",
    [
        "../secret.jpg",
        "products/../../secret.jpg",
        "./../secret.jpg",
        "../media-other/a.jpg",  # a sibling whose name starts like the folder's
        ".",  # the folder itself is no photo
        "products/..",
        "products/a.jpg\x00.png",
    ],
)
def test_a_path_leading_out_of_the_folder_is_told_apart_from_no_path(media, stored):
    with pytest.raises(OutsideMediaFolder):
        media_path(stored, media)
    assert image_file(stored, media) is None


def test_a_link_out_of_the_folder_is_refused(media, tmp_path):
    (media / "products" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    (media / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(OutsideMediaFolder):
        media_path("products/link.jpg", media)
    with pytest.raises(OutsideMediaFolder):
        media_path("elsewhere/secret.jpg", media)


def test_a_media_folder_behind_a_link_still_holds_its_files(media, tmp_path):
    link = tmp_path / "media-link"
    link.symlink_to(media, target_is_directory=True)
    assert media_path("products/a.jpg", link).read_bytes() == b"photo"
