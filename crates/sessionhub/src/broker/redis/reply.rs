//! Reading what the broker's scripts answer and what its pub/sub channels carry.

use std::sync::Arc;

use crate::broker::{Publication, Receipt};

/// Reads the unkept publish script's `<nodes>:<duplicate>`.
pub(super) fn parse_unkept_receipt(reply: &str) -> Option<(usize, bool)> {
    let (nodes, duplicate) = reply.split_once(':')?;
    let duplicate = match duplicate {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some((nodes.parse().ok()?, duplicate))
}

/// Reads the publish script's `<offset>:<epoch>:<nodes>:<duplicate>`.
pub(super) fn parse_receipt(reply: &str) -> Option<Receipt> {
    let mut parts = reply.split(':');
    let receipt = Receipt {
        offset: parts.next()?.parse().ok()?,
        epoch: parts.next()?.into(),
        nodes: parts.next()?.parse().ok()?,
        connections: None,
        duplicate: match parts.next()? {
            "0" => false,
            "1" => true,
            _ => return None,
        },
    };
    parts.next().is_none().then_some(receipt)
}

/// Stream entries as XRANGE answers them: id, then field/value pairs.
pub(super) type StreamEntries = Vec<(String, Vec<(String, String)>)>;

/// Reads history entries (id `<offset>-0`, field `d` the data) as publications of
/// `epoch`; `None` if any is not one the publish script wrote.
pub(super) fn parse_entries(epoch: &Arc<str>, entries: StreamEntries) -> Option<Vec<Publication>> {
    entries
        .into_iter()
        .map(|(id, fields)| {
            let offset = id.split('-').next()?.parse().ok()?;
            let data = fields.into_iter().find(|(f, _)| f == "d")?.1;
            Some(Publication {
                offset,
                epoch: epoch.clone(),
                data: data.into(),
            })
        })
        .collect()
}

/// Splits `<offset>:<epoch>:<data>` as the publish script sends it.
pub(super) fn parse_envelope(text: &str) -> Option<Publication> {
    let (offset, rest) = text.split_once(':')?;
    let (epoch, data) = rest.split_once(':')?;
    Some(Publication {
        offset: offset.parse().ok()?,
        epoch: epoch.into(),
        data: data.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replies_parse_whole_or_not_at_all() {
        let receipt = parse_receipt("12:e1-3f:2:0").unwrap();
        assert_eq!(
            (
                receipt.offset,
                &*receipt.epoch,
                receipt.nodes,
                receipt.duplicate
            ),
            (12, "e1-3f", 2, false)
        );
        assert!(parse_receipt("4:e:0:1").unwrap().duplicate);
        assert_eq!(&*parse_receipt("0::3:0").unwrap().epoch, "");
        for bad in ["", "1:e:2", "1:e:2:0:9", "x:e:2:0", "1:e:-1:0", "1:e:2:2"] {
            assert!(parse_receipt(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse_unkept_receipt("3:0"), Some((3, false)));
        assert_eq!(parse_unkept_receipt("0:1"), Some((0, true)));
        for bad in ["", "3", "3:2", "x:0", "3:0:1", "-1:0"] {
            assert!(parse_unkept_receipt(bad).is_none(), "{bad:?}");
        }
    }
}
