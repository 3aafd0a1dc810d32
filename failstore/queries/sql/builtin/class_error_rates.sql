-- name: class_error_rates
-- description: Error rate per class for each model. A prediction counts as an error unless
-- description: `correct` is true (so images whose label is not a model class count as errors).
-- param: grouping = 'label' -- 'label' (class = the image's label) or 'prediction' (class = the predicted class)
-- param: model = NULL -- only this model (default: every model)
-- One branch per grouping: DuckDB drops the branch whose constant condition is false, so only
-- the columns of the chosen grouping are read.
SELECT * FROM (
    SELECT
        p.model,
        'label' AS "grouping",
        i.label AS "class",
        count(*) AS n,
        count(*) FILTER (WHERE p.correct IS NOT TRUE) AS errors,
        CAST(count(*) FILTER (WHERE p.correct IS NOT TRUE) AS DOUBLE) / count(*) AS error_rate
    FROM predictions AS p
    JOIN images AS i ON i.image_id = p.image_id
    WHERE $grouping = 'label' AND ($model IS NULL OR p.model = $model)
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT
        p.model,
        'prediction' AS "grouping",
        p.prediction AS "class",
        count(*) AS n,
        count(*) FILTER (WHERE p.correct IS NOT TRUE) AS errors,
        CAST(count(*) FILTER (WHERE p.correct IS NOT TRUE) AS DOUBLE) / count(*) AS error_rate
    FROM predictions AS p
    WHERE $grouping = 'prediction' AND ($model IS NULL OR p.model = $model)
    GROUP BY 1, 2, 3
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL
    WHERE $grouping NOT IN ('label', 'prediction')
      AND error('class_error_rates: grouping must be ''label'' or ''prediction''') IS NULL
)
ORDER BY model, error_rate DESC, "class" NULLS LAST
