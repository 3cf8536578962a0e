"""The "Use your own data" example (docs/your-own-data.md): an Amazon-style CSV pair (ISO 8601 timestamps, long product
titles) loads through the shipped config with only data.path changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from genrec.cli import main as cli_main
from genrec.config import load_config
from genrec.data import load_split
from genrec.data.splits import training_examples
from genrec.errors import DataError
from genrec.prompts.template import PromptTemplate

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "own_data" / "amazon_csv.yaml"

TITLES = {  # long titles, commas and quotes inside (the CSV writer below quotes them)
    "B07XJ8C8F5": 'Acme Pro X2 Wireless Bluetooth Over-Ear Headphones, Active Noise Cancelling, 40-Hour Battery, '
                  'Memory-Foam Ear Cups, Built-in Microphone, "Studio" Sound Profile - Black',
    "B08N5WRWNW": "Stainless Steel Insulated Water Bottle with Straw Lid, Leak-Proof, Keeps Drinks Cold 24 Hours "
                  "and Hot 12 Hours, BPA-Free, Wide Mouth, 32 oz - Ocean Blue Gradient",
    "B09G9FPHY6": "Ergonomic Mesh Office Chair with Adjustable Lumbar Support, 3D Armrests, Headrest, Tilt Lock "
                  "and Smooth-Rolling Casters for Home Office and Gaming, Grey",
    "B0B7BP6CJN": "USB-C Charging Cable 2-Pack, 6.6 ft Braided Nylon Fast-Charge Cord Compatible with Phones, "
                  "Tablets and Laptops up to 100 W, Aluminium Connectors, Space Grey",
    "B01N5IB20Q": "Cast Iron Skillet 12-Inch, Pre-Seasoned Frying Pan for Stovetop, Oven, Grill and Campfire "
                  "Cooking, with Silicone Handle Cover and Pour Spouts, Made to Last",
}
ITEMS = list(TITLES)
USERS = ["A2SUAM1J3GNN3B", "A3SGXH7AUHU8GW", "A1D87F6ZCVE5NK", "AQP1VPK16SVWM", "A3JRGQVEQN31IQ", "AB9S9279OZ3QO"]


def order_of(u: int) -> list[str]:
    """User u's items, oldest first: a different rotation per user."""
    return ITEMS[u % 5:] + ITEMS[:u % 5]


def write_amazon(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for u, user in enumerate(USERS):
        for t, item in enumerate(order_of(u)):
            # ISO 8601 in three spellings; day t + 1 keeps each user's order; the file lists rows newest first
            stamp = [f"2023-03-{t + 1:02d}T08:15:00Z", f"2023-03-{t + 1:02d} 10:15:00+02:00",
                     f"2023-03-{t + 1:02d}T08:15:00"][t % 3]
            rows.append(f"{user},{item},{stamp},{1 + (u + t) % 5}")
    rows.reverse()
    rows.append(f"AXXONLYTWO,{ITEMS[0]},2023-04-01T00:00:00Z,5")  # 2 interactions: 5-core drops this user
    rows.append("AXXONLYTWO,B0RAREITEM,2023-04-02T00:00:00Z,4")  # 1 interaction: and this item
    (folder / "interactions.csv").write_text("user_id,item_id,timestamp,rating\n" + "\n".join(rows) + "\n",
                                             encoding="utf-8")
    quoted = [f'{item},"{title.replace(chr(34), chr(34) * 2)}"' for item, title in TITLES.items()]
    quoted.append('B0RAREITEM,"Replacement Filter Cartridge for Countertop Water Filtration Systems, 3-Pack"')
    (folder / "items.csv").write_text("item_id,title\n" + "\n".join(quoted) + "\n", encoding="utf-8")


@pytest.fixture()
def amazon(tmp_path) -> list[str]:
    write_amazon(tmp_path / "amazon")
    return [f"data.path={tmp_path / 'amazon'}"]


def test_shipped_config_loads_amazon_csv(amazon):
    cfg = load_config(CONFIG, amazon)
    assert (cfg.data.format, cfg.data.item_text, cfg.data.k_core, cfg.items.identifier) == ("csv", "{title}", 5, "atomic")
    split = load_split(cfg)
    assert sorted(split.sequences) == sorted(USERS)  # AXXONLYTWO and B0RAREITEM fell to the 5-core
    assert sorted(it.item_id for it in split.catalog.items) == sorted(ITEMS)
    assert {it.item_id: it.text for it in split.catalog.items} == TITLES  # long titles, commas and quotes intact
    assert all(len(t) > 150 for t in TITLES.values())
    for u, user in enumerate(USERS):
        assert [split.catalog[i].item_id for i in split.sequences[user]] == order_of(u)  # by time, not file order
    start = 1677658500.0  # 2023-03-01T08:15:00Z; the three spellings are the same instant of each day
    assert split.times[USERS[0]] == [start + 86400 * d for d in range(5)]
    assert sorted(split.eval_users) == sorted(USERS)  # 5 interactions each: >= 3, so every user is evaluated
    assert len(training_examples(split, cfg.data, cfg.train.objective)) == 6  # one window of 3 training items each
    ex = split.example(USERS[1], "test", cfg.data.max_history)
    assert split.catalog[ex.target].item_id == order_of(1)[-1] and len(ex.history) == 4
    template = PromptTemplate.load(REPO / cfg.prompt.template)
    template.check(split.catalog, "atomic")
    assert template.render_prompt(ex, split.catalog, "atomic") == \
        "Products this customer bought or reviewed, oldest first:" + "".join(
            f"<item_{i}>" for i in order_of(1)[:4])


def test_data_summary_command_on_the_example(amazon, capsys):
    assert cli_main(["data", "--config", str(CONFIG), *amazon]) in (0, None)
    out = capsys.readouterr().out
    assert '"users": 6' in out and '"items": 5' in out


def test_example_without_a_product_title_is_an_error(amazon, tmp_path):
    items = tmp_path / "amazon" / "items.csv"
    items.write_text("\n".join(line for line in items.read_text().splitlines() if not line.startswith("B08N5WRWNW"))
                     + "\n")
    with pytest.raises(DataError, match=r"1 of 5 items have no text for data.item_text '\{title\}'.*B08N5WRWNW"):
        load_split(load_config(CONFIG, amazon))
