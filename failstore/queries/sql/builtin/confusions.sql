-- name: confusions
-- description: How often each model predicted each class for each image label (all pairs,
-- description: correct ones included), most frequent first.
-- param: model = NULL -- only this model (default: every model)
SELECT
    p.model,
    i.label,
    p.prediction,
    count(*) AS n
FROM predictions AS p
JOIN images AS i ON i.image_id = p.image_id
WHERE $model IS NULL OR p.model = $model
GROUP BY 1, 2, 3
ORDER BY n DESC, p.model, i.label NULLS LAST, p.prediction NULLS LAST
