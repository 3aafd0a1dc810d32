-- name: class_error_rates
-- description: Error rate per class for each model. A prediction counts as an error unless
-- description: `correct` is true (so images whose label is not a model class count as errors).
-- param: grouping = 'label' -- 'label' (class = the image's label) or 'prediction' (class = the predicted class)
-- param: model = NULL -- only this model (default: every model)
SELECT
    p.model,
    $grouping AS "grouping",
    CASE $grouping
        WHEN 'label' THEN i.label
        WHEN 'prediction' THEN p.prediction
        ELSE error('class_error_rates: grouping must be ''label'' or ''prediction''')
    END AS "class",
    count(*) AS n,
    count(*) FILTER (WHERE p.correct IS NOT TRUE) AS errors,
    CAST(count(*) FILTER (WHERE p.correct IS NOT TRUE) AS DOUBLE) / count(*) AS error_rate
FROM predictions AS p
JOIN images AS i ON i.image_id = p.image_id
WHERE $model IS NULL OR p.model = $model
GROUP BY 1, 2, 3
ORDER BY p.model, error_rate DESC, "class" NULLS LAST
