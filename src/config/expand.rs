//! `${VAR}` / `${VAR:-default}` expansion in every string value of the parsed YAML, remembering
//! which text came from the environment so error messages can hide it.

use super::locate::Seg;
use serde_yaml::Value;
use std::collections::HashSet;

/// The environment as a lookup: the process env, or a map in tests.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What an expansion found.
#[derive(Default)]
pub(crate) struct Expansion {
    /// `(variable, value)` for every non-empty value taken from the environment.
    pub(crate) used: Vec<(String, String)>,
    /// `(path of the scalar, message)`; messages name variables, never values.
    pub(crate) errors: Vec<(Vec<Seg>, String)>,
    /// Paths of the scalars that contained a `${...}`.
    pub(crate) expanded: HashSet<Vec<Seg>>,
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in every string value (not key) under `v`.
pub(crate) fn expand(v: &mut Value, env: Env, path: &mut Vec<Seg>, out: &mut Expansion) {
    let children: Vec<(Seg, &mut Value)> = match v {
        Value::String(s) => return expand_str(s, env, path, out),
        Value::Tagged(t) => return expand(&mut t.value, env, path, out),
        Value::Sequence(items) => items
            .iter_mut()
            .enumerate()
            .map(|(i, c)| (Seg::Index(i), c))
            .collect(),
        Value::Mapping(m) => m
            .iter_mut()
            .map(|(k, c)| (Seg::Key(key_text(k)), c))
            .collect(),
        _ => return,
    };
    for (seg, child) in children {
        path.push(seg);
        expand(child, env, path, out);
        path.pop();
    }
}

fn expand_str(s: &mut String, env: Env, path: &[Seg], out: &mut Expansion) {
    let (mut new, mut rest, errors_before) = (String::new(), s.as_str(), out.errors.len());
    while let Some(i) = rest.find('$') {
        new.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            new.push('$');
            rest = r;
            continue;
        }
        let Some(r) = rest.strip_prefix('{') else {
            new.push('$');
            continue;
        };
        let Some((inner, r)) = r.split_once('}') else {
            let msg = "unterminated `${`; write `$$` for a literal `$`";
            return out.errors.push((path.to_vec(), msg.into()));
        };
        rest = r;
        let (name, default) = inner
            .split_once(":-")
            .map_or((inner, None), |(n, d)| (n, Some(d)));
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        // `:-` also applies when the variable is set but empty, as in the shell.
        let value = env(name).filter(|v| !v.is_empty() || default.is_none());
        match (valid, value, default) {
            (false, ..) => out.errors.push((
                path.to_vec(),
                format!("invalid variable name `{name}` in `${{...}}`"),
            )),
            (true, Some(v), _) => {
                new.push_str(&v);
                if !v.is_empty() {
                    out.used.push((name.into(), v));
                }
            }
            (true, None, Some(d)) => new.push_str(d),
            (true, None, None) => {
                let hint = format!("write `${{{name}:-default}}` for a default");
                let msg = format!("environment variable `{name}` is not set ({hint})");
                out.errors.push((path.to_vec(), msg));
            }
        }
    }
    new.push_str(rest);
    if out.errors.len() == errors_before {
        if s.contains("${") {
            out.expanded.insert(path.to_vec());
        }
        *s = new;
    }
}

/// A map key as a path shows it (non-string keys by their YAML text).
fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::locate::PathDisplay;
    use super::*;

    fn run(yaml: &str) -> (String, Expansion) {
        let env = |k: &str| {
            [("DIR", "/home/u"), ("TOKEN", "s3cr3t"), ("EMPTY", "")]
                .iter()
                .find(|e| e.0 == k)
                .map(|e| e.1.into())
        };
        let (mut v, mut out) = (
            serde_yaml::from_str(yaml).unwrap_or(Value::Null),
            Expansion::default(),
        );
        expand(&mut v, &env, &mut Vec::new(), &mut out);
        (serde_yaml::to_string(&v).unwrap_or_default(), out)
    }

    #[test]
    fn expands_vars_defaults_and_escapes_in_values_only() {
        let list = "['${NO:-dflt}', '${EMPTY:-e}', '$${DIR}', cost $$5 $x, '${EMPTY}.']";
        let (yaml, out) = run(&format!("a: ${{DIR}}/x\nb: {list}\n${{TOKEN}}: ${{TOKEN}}"));
        assert!(out.errors.is_empty());
        assert_eq!(
            yaml,
            "a: /home/u/x\nb:\n- dflt\n- e\n- ${DIR}\n- cost $5 $x\n- .\n${TOKEN}: s3cr3t\n"
        );
        assert_eq!(
            out.used,
            [
                ("DIR".into(), "/home/u".into()),
                ("TOKEN".into(), "s3cr3t".into())
            ]
        );
    }

    #[test]
    fn missing_and_malformed_references_are_located_errors() {
        let (_, out) = run(
            "x:\n  - ok\n  - ${MISSING_1} and ${TOKEN} ${MISSING_2}\ny: ${bad-name}\nz: ${OPEN",
        );
        let msgs: Vec<String> = out
            .errors
            .iter()
            .map(|(p, m)| format!("{}: {m}", PathDisplay(p)))
            .collect();
        assert!(msgs[0].starts_with(
            "x[1]: environment variable `MISSING_1` is not set (write `${MISSING_1:-default}`"
        ));
        assert!(msgs[1].starts_with("x[1]: environment variable `MISSING_2` is not set"));
        assert_eq!(
            msgs[2..],
            [
                "y: invalid variable name `bad-name` in `${...}`",
                "z: unterminated `${`; write `$$` for a literal `$`"
            ]
        );
        assert!(!msgs.concat().contains("s3cr3t"));
    }
}
