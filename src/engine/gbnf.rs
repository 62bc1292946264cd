//! llama.cpp's GBNF grammars, rewritten as the Lark grammars llguidance reads,
//! so that a `grammar` written for llama.cpp's server works here unchanged.
//!
//! GBNF: `name ::= body` rules (`root` is the start), `"literals"` with
//! `\n \t \" \\ \xHH \uHHHH` escapes, `[...]` / `[^...]` character classes,
//! `.`, `( )`, `|`, `* + ?` and `{m}`, `{m,}`, `{m,n}` repetitions, `#`
//! comments; a rule runs until the next `name ::=`. Lark: `name: body` on one
//! line, `start` the start rule, JSON-escaped strings, `/regex/` classes, the
//! same operators and repetitions.

/// The Lark text of a GBNF grammar, or what is wrong with it.
pub fn to_lark(gbnf: &str) -> Result<String, String> {
    let tokens = lex(gbnf)?;
    let mut rules: Vec<(String, Vec<String>)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (Tok::Name(name), Some(Tok::Define)) = (&tokens[i], tokens.get(i + 1)) else {
            return Err(format!(
                "GBNF: expected a rule `name ::= …` at {}",
                tokens[i].describe()
            ));
        };
        i += 2;
        let mut body = Vec::new();
        while i < tokens.len()
            && !matches!(
                (&tokens[i], tokens.get(i + 1)),
                (Tok::Name(_), Some(Tok::Define))
            )
        {
            body.push(tokens[i].lark()?);
            i += 1;
        }
        if body.is_empty() {
            return Err(format!("GBNF: rule `{name}` has an empty body"));
        }
        rules.push((name.clone(), body));
    }
    if !rules.iter().any(|(n, _)| n == "root") {
        return Err("GBNF: no `root` rule (the grammar's start)".into());
    }
    let mut out = String::new();
    for (name, body) in rules {
        out.push_str(&rule_name(&name));
        out.push_str(": ");
        out.push_str(&body.join(" "));
        out.push('\n');
    }
    Ok(out)
}

/// Whether a `grammar` field is GBNF (it defines rules with `::=`).
pub fn is_gbnf(text: &str) -> bool {
    text.contains("::=")
}

/// Lark's name of a GBNF rule: `root` is `start`; the others keep their
/// name, lowercased, `-` as `_`, behind a prefix that no Lark keyword or
/// `start` can collide with.
fn rule_name(name: &str) -> String {
    if name == "root" {
        "start".into()
    } else {
        format!("g_{}", name.replace('-', "_").to_lowercase())
    }
}

#[derive(Debug)]
enum Tok {
    Name(String),
    Define,
    /// A literal's characters.
    Literal(String),
    /// A character class's text between the brackets, as written.
    Class(String),
    Any,
    /// `( ) | * + ?` and `{…}` repetitions, as written.
    Op(String),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Name(n) => format!("`{n}`"),
            Tok::Define => "`::=`".into(),
            Tok::Literal(s) => format!("the literal {s:?}"),
            Tok::Class(c) => format!("`[{c}]`"),
            Tok::Any => "`.`".into(),
            Tok::Op(o) => format!("`{o}`"),
        }
    }

    fn lark(&self) -> Result<String, String> {
        Ok(match self {
            Tok::Name(n) => rule_name(n),
            Tok::Define => unreachable!("rule boundaries are taken apart"),
            Tok::Literal(s) => serde_json::to_string(s).map_err(|e| e.to_string())?,
            Tok::Class(c) => format!("/[{}]/", c.replace('/', "\\/")),
            Tok::Any => "/(?s:.)/".into(),
            Tok::Op(o) => o.clone(),
        })
    }
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |what: &str, at: usize| {
        let line = chars[..at.min(chars.len())]
            .iter()
            .filter(|&&c| c == '\n')
            .count()
            + 1;
        Err(format!("GBNF, line {line}: {what}"))
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ':' if chars[i..].starts_with(&[':', ':', '=']) => {
                out.push(Tok::Define);
                i += 3;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err("a literal is not closed", i),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let Some((ch, len)) = escape(&chars[i..]) else {
                                return err("an unknown escape in a literal", i);
                            };
                            s.push(ch);
                            i += len;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Literal(s));
            }
            '[' => {
                let start = i + 1;
                i += 1;
                while i < chars.len() && chars[i] != ']' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return err("a character class is not closed", start);
                }
                out.push(Tok::Class(chars[start..i].iter().collect()));
                i += 1;
            }
            '.' => {
                out.push(Tok::Any);
                i += 1;
            }
            '(' | ')' | '|' | '*' | '+' | '?' => {
                out.push(Tok::Op(c.to_string()));
                i += 1;
            }
            '{' => {
                let start = i;
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                let rep: String = chars[start..(i + 1).min(chars.len())].iter().collect();
                if i >= chars.len()
                    || !rep[1..rep.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
                {
                    return err("a repetition is not `{m}`, `{m,}` or `{m,n}`", start);
                }
                out.push(Tok::Op(rep.replace(' ', "")));
                i += 1;
            }
            c if c.is_ascii_alphanumeric() || c == '-' || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '-' || chars[i] == '_')
                {
                    i += 1;
                }
                out.push(Tok::Name(chars[start..i].iter().collect()));
            }
            other => return err(&format!("unexpected `{other}`"), i),
        }
    }
    Ok(out)
}

/// The character of the escape at the start of `s` (`\n`, `\xHH`, …) and
/// how many characters it takes.
fn escape(s: &[char]) -> Option<(char, usize)> {
    let hex = |n: usize| -> Option<(char, usize)> {
        let digits: String = s.get(2..2 + n)?.iter().collect();
        let v = u32::from_str_radix(&digits, 16).ok()?;
        Some((char::from_u32(v)?, 2 + n))
    };
    match s.get(1)? {
        'n' => Some(('\n', 2)),
        't' => Some(('\t', 2)),
        'r' => Some(('\r', 2)),
        '"' => Some(('"', 2)),
        '\\' => Some(('\\', 2)),
        '[' => Some(('[', 2)),
        ']' => Some((']', 2)),
        'x' => hex(2),
        'u' => hex(4),
        'U' => hex(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbnf_rules_become_lark_rules() {
        let g = r#"
# a yes/no answer, then a number
root ::= answer " " num
answer ::= "yes" | "no"
num ::= [1-9] [0-9]{0,2}   # no leading zero
  | "0"
"#;
        let lark = to_lark(g).unwrap();
        assert_eq!(
            lark,
            "start: g_answer \" \" g_num\ng_answer: \"yes\" | \"no\"\ng_num: /[1-9]/ /[0-9]/ {0,2} | \"0\"\n"
        );
    }

    #[test]
    fn escapes_classes_and_names_carry_over() {
        let lark = to_lark(r#"root ::= "a\"b\n\x41\u00e9" [^"\\/] . (my-rule)* my-rule ::= "x"+"#)
            .unwrap();
        assert!(
            lark.starts_with("start: \"a\\\"b\\nAé\" /[^\"\\\\\\/]/ /(?s:.)/ ( g_my_rule ) *"),
            "{lark}"
        );
        assert!(lark.contains("g_my_rule: \"x\" +"), "{lark}");
    }

    #[test]
    fn bad_gbnf_is_named() {
        assert!(to_lark("answer ::= \"x\"").unwrap_err().contains("root"));
        assert!(to_lark("root ::= \"x").unwrap_err().contains("not closed"));
        assert!(to_lark("root ::= [a-z").unwrap_err().contains("not closed"));
        assert!(
            to_lark("root ::= \"x\" {a}")
                .unwrap_err()
                .contains("repetition")
        );
        assert!(
            to_lark("root \"x\"")
                .unwrap_err()
                .contains("expected a rule")
        );
        assert!(to_lark("root ::= \"\\q\"").unwrap_err().contains("escape"));
        assert!(is_gbnf("root ::= \"x\"") && !is_gbnf("start: \"x\""));
    }
}
