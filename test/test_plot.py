"""Fonts of the CIF-weight plots: which token labels can be drawn."""
import pytest
from matplotlib import font_manager

from icefall_cif.plot import CJK_FONTS, _fonts


def test_latin_is_drawable_and_private_use_characters_are_not():
    families, drawable = _fonts()
    assert families[0] == "DejaVu Sans"
    assert drawable("HELLO ▁WORLD")
    assert not drawable("\ue000")


@pytest.mark.skipif(
    not any("wqy" in path.lower() or "cjk" in path.lower() for path in font_manager.findSystemFonts()),
    reason="no CJK font installed (make installs fonts-wqy-microhei as root)",
)
def test_an_installed_cjk_font_is_found_even_after_matplotlib_cached_its_font_list():
    families, drawable = _fonts()
    assert any(name in families for name in CJK_FONTS)
    assert drawable("的是在")
