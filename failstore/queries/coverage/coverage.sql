-- name: coverage
-- description: Shared-Interest coverage of the latest `failstore coverage` run (or Coverage.fit)
-- description: for each target model, saliency method and explained class kind: one row per
-- description: image with IoU, ground-truth coverage (gtc), saliency coverage (sc), soft sc and its
-- description: case. run_id links to analysis_runs. sanity: the method's verdict in the model's
-- description: latest cascading `failstore sanity` run (NULL before one), with sanity_reason.
-- description: See docs/coverage.md.
-- param: model = NULL -- only this target model
-- param: method = NULL -- only this saliency method
-- param: case = NULL -- only this case (e.g. 'distractor')
-- param: class = NULL -- only images of this label
SELECT c.*, s.verdict AS sanity, s.reason AS sanity_reason
FROM coverage_scores AS c
LEFT JOIN (
    -- the method's verdict in the latest cascading randomisation test of the model, if any
    SELECT v.model, v.method, arg_max(v.verdict, r.used_at) AS verdict,
        arg_max(v.reason, r.used_at) AS reason
    FROM {{ table_or_empty(sanity_verdicts) }} AS v
    JOIN analysis_runs AS r ON r.run_id = v.run_id
    WHERE v.test = 'cascading'
    GROUP BY v.model, v.method
) AS s ON s.model = c.model AND s.method = c.method
WHERE c.run_id IN (
    SELECT arg_max(r.run_id, r.used_at)
    FROM analysis_runs AS r
    WHERE r.analysis = 'coverage'
    GROUP BY r.run_key
)
    AND ($model IS NULL OR c.model = $model)
    AND ($method IS NULL OR c.method = $method)
    AND ($case IS NULL OR c."case" = $case)
    AND ($class IS NULL OR c.label = $class)
ORDER BY c.model, c.method, c.label, c.image_id
