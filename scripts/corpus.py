"""The tokenizer test corpus: hand-picked strings plus seeded combinations.

Imported by gen_fixtures.py; the generated list is committed as
tests/fixtures/tokenizer/corpus.json, so this file only matters when the corpus changes.
"""
import random

HAND = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    "\r\n",
    "a",
    "Hello",
    "Hello world",
    " Hello world",
    "Hello world ",
    "Hello  world",
    "Hello,   world!   ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you're right, they've said it'll work, but we'd better check. It's John's.",
    "I'M SURE YOU'RE RIGHT, THEY'VE SAID IT'LL WORK. IT'S JOHN'S.",
    "don't won't can't shouldn't y'all o'clock rock'n'roll",
    "What's up?! Nothing... really??? OK!!!",
    "\"Quoted\" and 'single quoted' and `backticks` and «guillemets» and „Anführungszeichen“",
    "e-mail: someone@example.com, web: https://example.com/path?q=1&r=two#frag",
    "C:\\Users\\name\\Documents\\file.txt",
    "1",
    "12",
    "123",
    "1234",
    "12345678901234567890",
    "3.14159265358979",
    "-42 +17 1e-9 0x1F 0b1010 1_000_000",
    "Call 555-123-4567 or +1 (800) 555-0199 before 2024-12-31 23:59:59.",
    "The year 1999 had 365 days; 2000 had 366.",
    "Ⅻ ½ ¾ ² ³ ١٢٣ ४५६ 七八九",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"hello\\n\");\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "{\"name\": \"ferry\", \"version\": [0, 1, 0], \"ok\": true, \"none\": null}",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "<div class=\"main\"><p>Hello &amp; welcome</p></div>",
    "    indented with four spaces",
    "\tindented with a tab",
    "trailing spaces   \n  and leading ones",
    "line one\nline two\r\nline three\rline four",
    "many     spaces     between     words",
    "mixed \t tabs \t\t and spaces",
    "\n\n\nparagraph after blank lines\n\n\n",
    "   \n   \n   ",
    "你好，世界！",
    "我喜欢用Rust写代码，因为它又快又安全。",
    "日本語のテキストです。カタカナとひらがなと漢字。",
    "東京は日本の首都です",
    "안녕하세요, 세계! 한국어 문장입니다.",
    "Привет, мир! Как дела?",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "Xin chào thế giới",
    "Ærøskøbing Ångström Œuvre façade naïve coöperate",
    "Straße Maße groß ẞ",
    "İstanbul ıı İİ",
    "😀",
    "😀😃😄😁",
    "I ❤️ Rust 🦀!",
    "👩‍👩‍👧‍👦 family, 👍🏽 thumbs, 🇯🇵 flag, 🏳️‍🌈",
    "emoji at end 🎉",
    "🎉 emoji at start",
    "math: ∀x∈ℝ, x² ≥ 0; ∑ᵢ aᵢ = ∫ f(x) dx ≈ π",
    "arrows → ← ↑ ↓ ⇒ and boxes ┌─┐ │ └─┘",
    "zero\u200bwidth\u200bspace and non\u00a0breaking\u00a0space",
    "combining: e\u0301 a\u0300 n\u0303 o\u0308",
    "full-width: ＡＢＣ　１２３",
    "tab\tseparated\tvalues\t1\t2\t3",
    "a,b,c\n1,2,3\n4,5,6\n",
    "# Title\n\n- item one\n- item two\n\n```python\nprint('hi')\n```\n",
    "$$ \\frac{a}{b} + \\sqrt{x^2 + y^2} $$",
    "!!!???...,,,;;;:::",
    "----====____++++",
    "((()))[[[]]]{{{}}}<<<>>>",
    "a" * 100,
    "ab " * 40,
    "The café's crème brûlée costs €5.50 (or £4.80, ¥800).",
    "Mixed: English, 中文, русский, العربية, 日本語, 한국어 in one line.",
    "version 2.0.1-beta+build.42",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "x=1;y=2;z=x+y;print(z)",
    "   leading and trailing   ",
    "\u3000ideographic space\u3000",
    "surrogate-free: \U0001F600 \U0001F4A9 \U00010348",
    "control bytes: a\x14b \x00 \x01\x02 \x1b[31mred\x1b[0m \x7f",
    "C:\\Users\\name=Documents\\\x14\x1c\x00 .t8t.",
]

SPECIAL = {
    "smollm2": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<fim_prefix>"],
    "qwen05": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>",
               "<|fim_suffix|>", "<|file_sep|>", "<tool_call>", "</tool_call>"],
}

SPECIAL_HAND = [
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>",
    "text before<|endoftext|>text after",
    "<|endoftext|><|endoftext|>",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|",
    "<|im_start|><|im_end|>",
    "partial <|im_end and <im_start|>",
    "<|fim_prefix|>def f():<|fim_suffix|>\n    return 1<|fim_middle|>",
    "<repo_name>ferry<file_sep>src/main.rs\nfn main() {}",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "not special: < | im_start | >",
]

WORDS = ["hello", "world", "Rust", "model", "token", "GPU", "layer", "the", "of", "and", "streaming",
         "cache", "ferry", "quantize", "日本", "中文", "привет", "😀", "🚀", "42", "3.14", "x", "'s",
         "don't", "\n", "\t", "  ", "...", "()", "{}", "->", "==", "#", "é", "ß", "ｶﾀｶﾅ", "१२३"]


def corpus():
    out = list(HAND) + list(SPECIAL_HAND)
    rng = random.Random(1234)
    while len(out) < 260:
        n = rng.randint(1, 12)
        parts = []
        for _ in range(n):
            w = rng.choice(WORDS)
            sep = rng.choice([" ", " ", " ", "", "\n", "  ", ", ", "\t"])
            parts.append(w + sep)
        s = "".join(parts)
        if rng.random() < 0.15:
            s = s.upper()
        out.append(s)
    return out
