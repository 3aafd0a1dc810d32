-- name: samples
-- description: One row per (model, image): the model's prediction joined to the image's
-- description: split, label, tags and metadata columns (vectors, mask, boxes and the file
-- description: stat columns left out).
SELECT
    p.model,
    i.image_id,
    i.uri,
    i.split,
    i.label,
    p.target,
    p.prediction,
    p.confidence,
    p.correct,
    {{ column(images, i, tags) }}
    {{ other_columns(images, i, image_id, uri, split, label, tags, boxes, mask, stat_size, stat_mtime_ns) }}
FROM predictions AS p
JOIN images AS i ON i.image_id = p.image_id
